"""Planning and running jobs. ``EXECUTORS`` maps ``--executor NAME`` to executor classes
(lazily imported; third parties add theirs through the ``uadbench.executors`` entry-point
group). An executor is constructed as ``Cls(spec, run_dir, device=, batch_size=,
progress=, dtype=, only_failed=, **options)`` and has ``run() -> Summary`` and a
``summary`` attribute (see :class:`uadbench.engine.local.LocalExecutor`)."""

from ..registry import Registry

EXECUTORS: Registry = Registry("executor", None, "uadbench.executors")

EXECUTORS.register(
    "local",
    "uadbench.engine.local:LocalExecutor",
    summary="one process, each model loaded once",
)
EXECUTORS.register(
    "ray",
    "uadbench.engine.ray_executor:RayExecutor",
    summary="Ray actors, one per model, on a cluster or this machine",
    install="pip install 'uadbench[ray]'",
)
