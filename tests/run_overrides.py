"""The overrides that make a training run tiny and fast, shared by the tests that launch runs."""

TINY_RUN = [
    "run.wandb_mode=offline",
    "model.tiny_hidden_size=32",
    "model.tiny_num_layers=1",
    "model.window_size=2",
    "model.head_hidden_size=32",
    "model.head_num_layers=1",
    "data.batch_size=4",
    "train.lr=1e-3",
    "train.log_every=1",
]
