"Everything biofastai exports, for `from biofastai.all import *` in notebooks."
from .core import *
from .synth import *
from .io import *
from .channels import *
from .sequences import *
from .tiles import *
from .losses import *
from .metrics import *
from .callbacks import *
from .layers import *
from .cellseg import *
from .rescunet import *
from .spots import *
from .nextframe import *
from .spines import *
from .compare import *
from .cli import *
