"""inception_jax: the Inception family in JAX/Flax NNX.

Build networks with ``create_model``; see ``list_models()`` for the architectures.
Importing the package adds its XLA:CPU flags to ``XLA_FLAGS`` if JAX has not
computed yet (``configure_xla``; ``INCEPTION_JAX_XLA_DEFAULTS=0`` turns it off).
"""

from inception_jax import xla_flags as _xla_flags
from inception_jax.xla_flags import configure_xla

_xla_flags.configure_on_import()  # before anything below could start JAX

# Importing an architecture module registers its table.
from inception_jax import inception_resnet  # noqa: F401
from inception_jax import inception_v1  # noqa: F401
from inception_jax import inception_v2  # noqa: F401
from inception_jax import inception_v3  # noqa: F401
from inception_jax import inception_v4  # noqa: F401
from inception_jax.factory import Classifier, create_model, load
from inception_jax.model import Inception, InceptionOutput, ModelConfig
from inception_jax.pretrained import get_pretrained_cfg, list_pretrained
from inception_jax.registry import get_arch, list_models
from inception_jax.summary import summary  # the function (the package holds Summary, ...)

__all__ = ['Classifier', 'Inception', 'InceptionOutput', 'ModelConfig', 'configure_xla',
           'create_model', 'get_arch', 'get_pretrained_cfg', 'list_models', 'list_pretrained',
           'load', 'summary']
__version__ = '0.1.0'
