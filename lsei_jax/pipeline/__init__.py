"""The pipeline: a config resolved once into a run spec (`spec`), a graph of stage nodes
that each own their step, inputs, checkpoint signature and evaluators (`graph`, `stages/`),
and two walks over it: `train` (fit.py) and `evaluate` (evaluation.py)."""
from lsei_jax.pipeline.evaluation import (compute, concept_evaluation, evaluate,  # noqa: F401
                                          evaluate_seeds, write)
from lsei_jax.pipeline.fit import fit_workdir, train  # noqa: F401
from lsei_jax.pipeline.graph import (GRAPH, NODES, STAGES, link_of, stage_names,  # noqa: F401
                                     upstream_closure)
from lsei_jax.pipeline.spec import (Models, RunSpec, build, make_spec, resolve,  # noqa: F401
                                    validate_config)
from lsei_jax.pipeline.templates import (initial_state, restore_target,  # noqa: F401
                                         template_state)
from lsei_jax.streams import stream, stream_seed  # noqa: F401
