"""One training run: the loop in phases, its seeds and determinism, checkpoints, the environment
it ran in, injected faults and perturbations, and where a NaN started."""
