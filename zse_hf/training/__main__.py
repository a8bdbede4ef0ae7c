"""`python -m zse_hf.training` (e.g. under `torchrun`) runs `zse-sbir train`."""

import sys

from .trainer import main

sys.exit(main())
