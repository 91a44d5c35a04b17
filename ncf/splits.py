"""The temporal splits of a dataset: their names and the column that holds them."""

SPLIT = "split"
TRAIN, VAL, TEST = "train", "val", "test"
