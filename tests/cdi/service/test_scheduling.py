"""Bounded running jobs, visible queue positions, fair order, metrics and cancel of queued jobs.

Timing is controlled with ``GateRunner`` (a real runner behind the ImportRunner
seam whose jobs end when the test says so).
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.cdi.service.conftest import GateRunner, Service


def _req(namespace: str, name: str, size: str = "1Gi") -> dict[str, Any]:
    return {"source": {"blank": {}}, "target": {"namespace": namespace, "name": name}, "size": size}


async def _metrics(service: Service) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = await (await service.client.get("/metrics")).text()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


async def test_running_jobs_are_bounded_and_the_queue_is_visible_and_fair(
    gate_service_factory: Any,
) -> None:
    service, runner = await gate_service_factory(max_running=2)
    runner: GateRunner
    # Tenant "big" submits four jobs first, then tenant "small" one.
    jobs = [await service.create(_req("big", f"b{i}")) for i in range(4)]
    small = await service.create(_req("small", "s0"))
    await runner.wait_started(2)
    assert runner.started == ["b0", "b1"]
    listing = (await (await service.client.get("/v1/imports")).json())["items"]
    positions = {j["target"]["name"]: j["queuePosition"] for j in listing}
    assert positions["b0"] is None
    assert positions["b1"] is None
    # Round-robin across namespaces: the small tenant's job is next, not fifth.
    assert positions["s0"] == 1
    assert positions["b2"] == 2
    assert positions["b3"] == 3
    runner.gate("b0").set()
    await runner.wait_started(3)
    assert runner.started[2] == "s0"
    assert (await service.job(small["id"]))["phase"] == "Running"
    for name in ("b1", "s0", "b2", "b3"):
        runner.gate(name).set()
    for job in jobs:
        assert (await service.wait(job["id"]))["phase"] == "Succeeded"


async def test_a_huge_import_never_takes_the_last_slot(gate_service_factory: Any) -> None:
    service, runner = await gate_service_factory(max_running=2)
    huge = [await service.create(_req("a", f"huge{i}", "100Gi")) for i in range(2)]
    small = await service.create(_req("a", "small", "1Gi"))
    await runner.wait_started(2)
    assert runner.started == ["huge0", "small"]
    assert (await service.job(huge[1]["id"]))["queuePosition"] == 1
    for name in ("huge0", "huge1", "small"):
        runner.gate(name).set()
    assert (await service.wait(small["id"]))["phase"] == "Succeeded"
    assert (await service.wait(huge[1]["id"]))["phase"] == "Succeeded"


async def test_cancel_a_queued_job(gate_service_factory: Any) -> None:
    service, runner = await gate_service_factory(max_running=1)
    first = await service.create(_req("a", "one"))
    second = await service.create(_req("a", "two"))
    await runner.wait_started(1)
    response = await service.client.delete(f"/v1/imports/{second['id']}")
    assert (await response.json())["phase"] == "Cancelled"
    runner.gate("one").set()
    assert (await service.wait(first["id"]))["phase"] == "Succeeded"
    assert runner.started == ["one"]
    assert runner.discarded == ["two"]


async def test_metrics_parse_and_follow_progress(gate_service_factory: Any) -> None:
    service, runner = await gate_service_factory(max_running=1)
    body = _req("a", "one") | {"ownerUID": "uid-1"}
    job = await service.create(body)
    queued = await service.create(_req("a", "two") | {"ownerUID": "uid-2"})
    await runner.wait_started(1)
    during = await _metrics(service)
    progress = during["kubevirt_cdi_import_progress_total"]
    assert progress[(("ownerUID", "uid-1"),)] == 50.0
    assert during["diskplane_import_queue_length"][()] == 1
    assert during["diskplane_import_jobs"][(("phase", "Running"),)] == 1
    runner.gate("one").set()
    await service.wait(job["id"])
    after = await _metrics(service)
    assert after["kubevirt_cdi_import_progress_total"][(("ownerUID", "uid-1"),)] == 100.0
    assert after["diskplane_import_completed_total"][()] == 1
    assert after["diskplane_import_source_bytes_total"][(("ownerUID", "uid-1"),)] == 1000
    await service.client.delete(f"/v1/imports/{queued['id']}")
    failures = (await _metrics(service))["diskplane_import_failures_total"]
    assert failures[(("reason", "Cancelled"),)] == 1


async def test_health_and_readiness(service: Service) -> None:
    assert (await service.client.get("/healthz")).status == 200
    ready = await service.client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json()) == {"ready": True}


class FlakyRunner(GateRunner):
    """Fails retryably the first time each job runs, then succeeds."""

    async def run(self, job: Any, on_progress: Any) -> Any:
        from cdi.service import JobFailed

        if job.spec.target.name not in self.started:
            self.started.append(job.spec.target.name)
            raise JobFailed("SourceUnavailable", "the source answered 503", final=False)
        self.gate(job.spec.target.name).set()
        return await super().run(job, on_progress)


async def test_a_retryable_failure_retries_the_job_and_counts_it(
    tmp_path: Any, aiohttp_client: Any
) -> None:
    from cdi.service import ServiceSettings, create_app

    settings = ServiceSettings(data_dir=tmp_path / "data", job_retry_backoff_seconds=0.01)
    service = Service(await aiohttp_client(create_app(settings, FlakyRunner())), settings)
    job = await service.create(_req("a", "flaky"))
    final = await service.wait(job["id"])
    assert final["phase"] == "Succeeded"
    assert final["retries"] == 1
    assert (await _metrics(service))["diskplane_import_retries_total"][()] == 1
