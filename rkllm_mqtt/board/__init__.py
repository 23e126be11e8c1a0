"""`rkllm-mqtt check`: what stands between this board and a running daemon, one finding per problem.

The problems RKLLM users hit are board problems (an old NPU driver, a model converted for another
chip, device nodes the service user cannot open, a runtime build this CPU cannot execute), so each
finding names what is wrong and the command or key that fixes it. Every file under /proc, /sys and
/dev is read below a root directory that tests (and containers) can point elsewhere.
"""

from rkllm_mqtt.board.findings import Finding, Status
from rkllm_mqtt.board.report import run_check

__all__ = ["Finding", "Status", "run_check"]
