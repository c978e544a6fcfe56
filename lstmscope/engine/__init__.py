"""Run LSTMs with torch: the one call (``run_lstm``) and what it needs.

``fused`` runs every cell ``nn.LSTM`` computes exactly; ``streaming`` runs long inputs chunk by chunk in
flat memory. Only this package turns numpy parameters into torch tensors.
"""

from lstmscope.engine.fused import (  # noqa: F401
    DTYPES,
    RunResult,
    busy_cores,
    check_device,
    configure_threads,
    default_threads,
    run_lstm,
    usable_cores,
)
