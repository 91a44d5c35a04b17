"""bench.collaborative_reference's EASE: the closed form against the constrained least squares
it solves, column by column."""

import numpy as np
import scipy.sparse as sp

from bench.collaborative_reference import ease_weights


def test_ease_weights_solve_each_product_from_the_others():
    rng = np.random.default_rng(0)
    dense = (rng.random((40, 6)) < 0.4).astype(np.float64)
    dense[:, 1] = dense[:, 0]  # two products always bought together
    l2 = 3.0
    weights = ease_weights(sp.csr_matrix(dense), l2)
    assert np.allclose(np.diag(weights), 0.0)
    for j in range(dense.shape[1]):  # min ||x_j - X_{-j} b||^2 + l2 ||b||^2, without b_j
        others = np.delete(np.arange(dense.shape[1]), j)
        x = dense[:, others]
        expected = np.linalg.solve(x.T @ x + l2 * np.eye(len(others)), x.T @ dense[:, j])
        np.testing.assert_allclose(weights[others, j], expected, rtol=1e-8, atol=1e-10)
    assert weights[0, 1] == weights[:, 1].max()  # the twin predicts its twin best
