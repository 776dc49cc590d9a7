"""What in a model can be compressed -> the search space -> a Candidate."""

from tightfit.spaces._candidate import Candidate
from tightfit.spaces._space import CompressionSpace, discover, discover_units

__all__ = ["Candidate", "CompressionSpace", "discover", "discover_units"]
