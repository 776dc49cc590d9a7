"""What in a model can be compressed -> the search space -> a Candidate.

Plain records and sampling only: discovering a model's units is the kernels' job
(``tightfit.kernels.discover``), so importing a space or a Candidate pulls no torch.
"""

from tightfit.spaces._candidate import DROP, Candidate
from tightfit.spaces._space import CompressionSpace
from tightfit.spaces._unit import Refusal, Unit

__all__ = ["DROP", "Candidate", "CompressionSpace", "Refusal", "Unit"]
