"""Training: the stage graph (`pipeline`), pure train steps, the resumable stage loop,
checkpoints and their signatures, the data-parallel mesh and workdir safety."""
