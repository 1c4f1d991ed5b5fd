"""cardioclr: anatomic priors (heart segmentation) meet SimCLR pretraining in cardiac MRI.

Implements and extends Nakashima et al., "Interaction of a priori anatomic knowledge with
self-supervised contrastive learning in cardiac MRI".
"""

__version__ = "0.1.0"
