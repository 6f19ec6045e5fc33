"""slowlearn's batched launcher, found by Hydra's plugin discovery (``hydra/launcher=batched``)."""
