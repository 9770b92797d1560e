"""Suite-wide settings: one torch thread (tiny models on a shared 2-core machine run faster and
more predictably that way, and results do not depend on the core count)."""

import torch

torch.set_num_threads(1)
