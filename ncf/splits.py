"""The temporal splits of a dataset and the training runs on them, by name.

* splits: ``train`` (everything before validation), ``val`` and ``test`` periods;
* runs: the ``validated`` run trains on labels that end where validation starts (its test
  figures are honest); the ``refit`` run trains the same way on labels through the data's
  end (the deployment model).
"""

SPLIT = "split"
TRAIN, VAL, TEST = "train", "val", "test"
VALIDATED, REFIT = "validated", "refit"
