# Type stub of the compiled encoder twin: same names and signatures as the pure twin.
from ._encoder_py import SENT as SENT
from ._encoder_py import SEPARATORS as SEPARATORS
from ._encoder_py import EventBuffer as EventBuffer
from ._encoder_py import LoopTurns as LoopTurns
from ._encoder_py import StreamBuffer as StreamBuffer
from ._encoder_py import check_sep as check_sep
from ._encoder_py import encode_fields as encode_fields
from ._encoder_py import encode_item as encode_item
from ._encoder_py import ensure_bytes as ensure_bytes
from ._encoder_py import first_step as first_step
from ._encoder_py import produce as produce
from ._encoder_py import set_event_class as set_event_class
