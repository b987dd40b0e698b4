"""``python -m inception_jax.summary``: see ``inception_jax.summary``."""

import sys

from inception_jax.summary import main

sys.exit(main())
