"""lsei_jax: Latent Space Explanation by Intervention, in JAX/Flax.

Public API: the pipeline entry points (train, evaluate, load_run, explain) for a classifier
given as a ClassifierSplit, and the method's functions (docs/method.md §3–§6), pure and
jit/vmap friendly (flags and callables are static arguments: see each docstring).
"""
from lsei_jax import baselines, concept_metrics, concepts
from lsei_jax.reporting import bias
from lsei_jax.classifier_split import ClassifierSplit, from_module, split_at
from lsei_jax.reporting.bias import prediction_association, reliance_report
from lsei_jax.fisher import batch_sigma, fisher_information, fisher_regularizer, similarity
from lsei_jax.interventions import (bit_set_mask, decisive_bits, flip_all_mask, intervene,
                                    single_bit_masks)
from lsei_jax.losses import bce_with_logits, classifier_loss, dvae_loss, explainer_loss
from lsei_jax.metrics import accuracy, agreement, change_rate, info_cosine, recon_accuracy
from lsei_jax.models import C1, C2, DVAE, Classifier, Explainer
from lsei_jax.relaxed_bernoulli import bernoulli_kl, hard_code, relaxed_bernoulli
from lsei_jax.reliance import reliance_by_attribute

__all__ = [
    'baselines', 'bias', 'concepts', 'concept_metrics',
    'ClassifierSplit', 'split_at', 'from_module',
    'train', 'evaluate', 'load_run', 'explain', 'Run',
    'C1', 'C2', 'Classifier', 'DVAE', 'Explainer',
    'relaxed_bernoulli', 'bernoulli_kl', 'hard_code',
    'fisher_information', 'fisher_regularizer', 'similarity', 'batch_sigma',
    'intervene', 'flip_all_mask', 'single_bit_masks', 'bit_set_mask', 'decisive_bits',
    'classifier_loss', 'dvae_loss', 'explainer_loss', 'bce_with_logits',
    'accuracy', 'agreement', 'change_rate', 'recon_accuracy', 'info_cosine',
    'reliance_by_attribute', 'prediction_association', 'reliance_report',
]
__version__ = '0.1.0'

# The pipeline entry points load on first use: they bring in training, plotting
# (matplotlib) and reporting, which the functional API above does not need.
_API = ('Run', 'evaluate', 'explain', 'load_run', 'train')


def __getattr__(name):
  if name in _API:
    from lsei_jax import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
