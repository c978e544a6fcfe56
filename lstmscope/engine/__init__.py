"""Run LSTMs with torch: the one call (``run_lstm``) and what it needs.

``fused`` runs every cell ``nn.LSTM`` computes exactly, and hands any other cell (other activations, ONNX's
peepholes, clip and coupled gates) to ``stepwise``, which has nn.LSTM's calling convention; ``streaming`` runs long inputs chunk by chunk in flat
memory with either. Only this package turns numpy parameters into torch tensors.
"""

from lstmscope.engine.fused import (  # noqa: F401
    DTYPES,
    RunResult,
    busy_cores,
    check_device,
    configure_threads,
    default_threads,
    engine_name,
    run_lstm,
    usable_cores,
)
