"""Running a cohort on Dask distributed: a LocalCluster on this machine, or any running scheduler.

Needs the optional ``dask[distributed]`` (``pip install vertebrae-labeling[cluster]``). Each case is one task
running :func:`cohort.label_case`; the model is cached per worker process (:func:`cohort.cached_model`), so
each worker loads it once whatever number of cases it labels. Results are written by the workers straight
into the output folder, which therefore has to be on storage every worker sees (a shared file system).

On a cluster, start the scheduler and workers with the cluster's own tools and pass the scheduler's
address: ``dask-jobqueue`` (SLURM, PBS, SGE: ``SLURMCluster(...).scale(jobs=10)``) or ``dask-kubernetes``
(``KubeCluster``) both give one. Start workers with ``--nthreads 1`` so that each worker labels one CT at
a time and PyTorch uses the worker's cores.
"""

from collections.abc import Iterator
from typing import Optional

from .cohort import FAILED, Case, CaseRecord, LabelOptions, label_case
from .errors import VertebraeLabelingError

#: Seconds to wait for a scheduler given by address (a cluster's scheduler may be starting up).
CONNECT_TIMEOUT_S: float = 30.0


def _client(scheduler: str, jobs: int, threads: Optional[int]):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise VertebraeLabelingError("--scheduler needs the optional Dask package: "
                                     "pip install 'vertebrae-labeling[cluster]'") from None
    if scheduler == "local":
        cluster = LocalCluster(n_workers=max(1, jobs), threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s"), None
    except (OSError, TimeoutError) as exc:
        raise VertebraeLabelingError(f"Could not reach the Dask scheduler at {scheduler}: {exc}") from None


def run_dask(todo: list[tuple[Case, str]], options: LabelOptions, scheduler: str, jobs: int = 2
             ) -> Iterator[CaseRecord]:
    """Label ``todo`` on Dask (``scheduler`` = ``"local"`` or an address), yielding records as cases finish."""
    from dask.distributed import as_completed

    client, cluster = _client(scheduler, jobs, options.threads)
    futures = {}
    try:
        for case, output in todo:
            # pure=False: two runs of one case are two tasks (a rerun after --overwrite labels again).
            futures[client.submit(label_case, case, output, options, pure=False, key=f"label-{case.name}")] = \
                (case, output)
        for future in as_completed(futures):
            case, output = futures[future]
            try:
                yield future.result()
            except Exception as exc:  # noqa: BLE001 - a worker lost mid-case: that case failed, the rest go on
                yield CaseRecord(case.name, FAILED, input=case.source, output=output,
                                 error=f"the Dask task failed: {type(exc).__name__}: {exc}")
    finally:
        client.cancel(list(futures))
        client.close()
        if cluster is not None:
            cluster.close()
