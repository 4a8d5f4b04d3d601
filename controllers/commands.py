"""kubectl habits on diskplane's resources: ``apply``, ``get``, ``describe``, ``delete``.

Every command works on the embedded store in the data dir; ``--kubeconfig``
and/or ``--context`` switch it to a Kubernetes cluster with the CRDs installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from controllers import cli_output, manifests
from controllers.api.kinds import (
    EVENT,
    VIRTUALMACHINE,
    VIRTUALMACHINEINSTANCE,
    ResourceKind,
    kind_by_name,
)
from controllers.errors import Conflict, ControllersError, NotFound, StoreError
from controllers.store.embedded import EmbeddedStore
from controllers.store.protocol import EventType, Object, Store

# How long ``delete`` waits for finalizers by default, like kubectl's --wait.
DELETE_WAIT_S = 60.0
# How often apply retries an update that lost an optimistic-concurrency race.
APPLY_CONFLICT_RETRIES = 3


@contextlib.asynccontextmanager
async def open_store(args: argparse.Namespace) -> AsyncIterator[Store]:
    """The embedded store in the data dir, or a cluster when --kubeconfig/--context say so."""
    store: Store
    if getattr(args, "kubeconfig", None) or getattr(args, "context", None):
        from controllers.store.kubernetes import KubernetesStore

        store = KubernetesStore.from_kubeconfig(args.kubeconfig, args.context)
    else:
        store = await EmbeddedStore.open(args.data_dir)
    try:
        yield store
    finally:
        await store.close()


def _run(fn: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Callable[..., int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(fn(args))
        except (ControllersError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return handler


def _kind(name: str) -> ResourceKind:
    try:
        return kind_by_name(name)
    except KeyError:
        raise ValueError(
            f'the server doesn\'t have a resource type "{name}"; try dv, vm or vmi'
        ) from None


def _ref(kind: ResourceKind, name: str) -> str:
    return f"{kind.singular}.{kind.group}/{name}" if kind.group else f"{kind.singular}/{name}"


# -- apply ---------------------------------------------------------------


async def _apply_one(store: Store, item: manifests.Manifest) -> str:
    kind, wanted = item.kind, item.object
    md = wanted["metadata"]
    namespace = md.get("namespace") or "default"
    for _ in range(APPLY_CONFLICT_RETRIES):
        try:
            current = await store.get(kind, namespace, md["name"])
        except NotFound:
            await store.create(kind, wanted)
            return "created"
        desired = copy.deepcopy(current)
        for key in ("labels", "annotations"):
            if key in md:
                desired["metadata"][key] = md[key]
        for key, value in wanted.items():
            if key not in ("metadata", "status", "apiVersion", "kind"):
                desired[key] = value
        if desired == current:
            return "unchanged"
        try:
            await store.update(kind, desired)
            return "configured"
        except Conflict:
            continue
    raise Conflict(f"{_ref(kind, md['name'])} kept changing while it was applied; try again")


async def apply(args: argparse.Namespace) -> int:
    items = manifests.load(args.filename, args.namespace)
    for item in items:
        for warning in item.warnings:
            print(f"Warning: {item.source}: {warning}", file=sys.stderr)
    async with open_store(args) as store:
        for item in items:
            outcome = await _apply_one(store, item)
            print(f"{_ref(item.kind, item.name)} {outcome}")
    return 0


# -- get -----------------------------------------------------------------


def _print_objects(args: argparse.Namespace, kind: ResourceKind, objs: list[Object]) -> None:
    single = bool(args.name)
    if args.output in ("yaml", "json"):
        print(cli_output.dump(objs, args.output, single))
    elif args.output == "name":
        for obj in objs:
            print(_ref(kind, obj["metadata"]["name"]))
    elif not objs:
        where = "any namespace" if args.all_namespaces else f"{args.namespace} namespace"
        print(f"No resources found in {where}.", file=sys.stderr)
    else:
        print(cli_output.table(kind, objs, args.output == "wide", args.all_namespaces))


async def get(args: argparse.Namespace) -> int:
    kind = _kind(args.kind)
    namespace = None if args.all_namespaces else args.namespace
    async with open_store(args) as store:
        if args.name:
            obj = await store.get(kind, args.namespace, args.name)
            objs, rv = [obj], obj["metadata"]["resourceVersion"]
        else:
            listing = await store.list(kind, namespace, args.selector)
            objs, rv = listing.items, listing.resource_version
        _print_objects(args, kind, objs)
        sys.stdout.flush()
        if args.watch:
            await _watch(args, store, kind, namespace, rv)
    return 0


async def _watch(
    args: argparse.Namespace, store: Store, kind: ResourceKind, namespace: str | None, rv: str
) -> None:
    async for event in store.watch(kind, namespace, rv, args.selector):
        obj = event.object
        if args.name and obj["metadata"]["name"] != args.name:
            continue
        if args.output in ("yaml", "json"):
            print("---" if args.output == "yaml" else "", end="\n" if args.output == "yaml" else "")
            print(cli_output.dump([obj], args.output, True))
        elif args.output == "name":
            print(_ref(kind, obj["metadata"]["name"]))
        else:
            row = cli_output.table(
                kind, [obj], args.output == "wide", args.all_namespaces, header=False
            )
            suffix = "   (deleted)" if event.type == EventType.DELETED else ""
            print(row + suffix)
        sys.stdout.flush()


# -- describe ------------------------------------------------------------


async def describe(args: argparse.Namespace) -> int:
    kind = _kind(args.kind)
    async with open_store(args) as store:
        obj = await store.get(kind, args.namespace, args.name)
        listing = await store.list(EVENT, args.namespace)
    uid = obj["metadata"].get("uid")
    events = [e for e in listing.items if e.get("involvedObject", {}).get("uid") == uid]
    events.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    print(cli_output.describe(obj, events))
    return 0


# -- delete --------------------------------------------------------------


async def _delete_one(
    args: argparse.Namespace, store: Store, kind: ResourceKind, ns: str, name: str
) -> None:
    pending = await store.delete(kind, ns, name)
    print(f'{kind.singular}.{kind.group} "{name}" deleted' if kind.group else f"{name} deleted")
    if pending is None or not args.wait:
        return
    rv = pending["metadata"]["resourceVersion"]

    async def gone() -> None:
        async for event in store.watch(kind, ns, rv):
            if event.type == EventType.DELETED and event.object["metadata"]["name"] == name:
                return

    try:
        await asyncio.wait_for(gone(), args.timeout)
    except TimeoutError:
        finalizers = ", ".join(pending["metadata"].get("finalizers") or [])
        raise StoreError(
            f"{_ref(kind, name)} still has finalizers ({finalizers}) after {args.timeout:g} s; "
            "is the controller running?"
        ) from None


async def delete(args: argparse.Namespace) -> int:
    targets: list[tuple[ResourceKind, str, str]] = []
    if args.filename:
        for item in manifests.load(args.filename, args.namespace):
            ns = item.object["metadata"].get("namespace") or args.namespace
            targets.append((item.kind, ns, item.name))
    elif args.kind and args.names:
        kind = _kind(args.kind)
        targets = [(kind, args.namespace, name) for name in args.names]
    else:
        raise ValueError("say what to delete: KIND NAME... or -f FILE")
    async with open_store(args) as store:
        for kind, ns, name in targets:
            await _delete_one(args, store, kind, ns, name)
    return 0


# -- start / stop / restart ------------------------------------------------


async def _set_run_strategy(args: argparse.Namespace, strategy: str) -> None:
    async with open_store(args) as store:
        for _ in range(APPLY_CONFLICT_RETRIES):
            vm = await store.get(VIRTUALMACHINE, args.namespace, args.name)
            if vm["spec"].get("runStrategy") == strategy:
                break
            vm["spec"]["runStrategy"] = strategy
            vm["spec"].pop("running", None)
            try:
                await store.update(VIRTUALMACHINE, vm)
                break
            except Conflict:
                continue


async def start(args: argparse.Namespace) -> int:
    await _set_run_strategy(args, "Always")
    print(f"VM {args.name} was scheduled to start")
    return 0


async def stop(args: argparse.Namespace) -> int:
    await _set_run_strategy(args, "Halted")
    print(f"VM {args.name} was scheduled to stop")
    return 0


async def restart(args: argparse.Namespace) -> int:
    async with open_store(args) as store:
        await store.get(VIRTUALMACHINE, args.namespace, args.name)
        try:
            await store.delete(VIRTUALMACHINEINSTANCE, args.namespace, args.name)
        except NotFound:
            pass  # not running: the controller starts it per runStrategy
    print(f"VM {args.name} was scheduled to restart")
    return 0


async def _set_paused(args: argparse.Namespace, paused: bool) -> None:
    from controllers.reconcilers.vmi import PAUSE_ANNOTATION

    async with open_store(args) as store:
        for _ in range(APPLY_CONFLICT_RETRIES):
            vmi = await store.get(VIRTUALMACHINEINSTANCE, args.namespace, args.name)
            annotations = vmi["metadata"].setdefault("annotations", {})
            annotations[PAUSE_ANNOTATION] = "true" if paused else "false"
            try:
                await store.update(VIRTUALMACHINEINSTANCE, vmi)
                return
            except Conflict:
                continue


async def pause(args: argparse.Namespace) -> int:
    await _set_paused(args, True)
    print(f"VMI {args.name} was scheduled to pause")
    return 0


async def unpause(args: argparse.Namespace) -> int:
    await _set_paused(args, False)
    print(f"VMI {args.name} was scheduled to unpause")
    return 0


async def _console_agent(args: argparse.Namespace) -> str:
    from controllers import nodes, up

    async with open_store(args) as store:
        try:
            return await nodes.agent_url_for(store, args.namespace, args.name)
        except nodes.VmiNotPlaced:
            endpoints = up.read_endpoints(args.data_dir)
            if endpoints is None:
                raise
            return endpoints.agent


def console(args: argparse.Namespace) -> int:
    """``diskplane console VM``: find the node agent that runs the VMI, then attach."""
    from virtnode.cli import attach_console

    agent = args.agent
    if agent is None:
        try:
            agent = asyncio.run(_console_agent(args))
        except (ControllersError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return attach_console(agent, args.namespace, args.name)


# -- parser --------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    parser.add_argument("--kubeconfig", help="use this cluster instead of the embedded store")
    parser.add_argument("--context", help="kubeconfig context (implies a cluster)")


def register(subparsers: Any) -> None:
    from controllers import run_controllers, up

    up.register(subparsers)
    run_controllers.register(subparsers)
    p = subparsers.add_parser("apply", help="create or update resources from YAML/JSON")
    p.add_argument("-f", "--filename", action="append", required=True, help="FILE, DIR or -")
    _common(p)
    p.set_defaults(handler=_run(apply))

    p = subparsers.add_parser("get", help="list resources (dv, vm, vmi) or show one")
    p.add_argument("kind", help="dv, vm, vmi (or their long names)")
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=("yaml", "json", "wide", "name"))
    p.add_argument("-w", "--watch", action="store_true", help="keep printing changes")
    p.add_argument("-l", "--selector", default="", help="label selector")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    _common(p)
    p.set_defaults(handler=_run(get))

    p = subparsers.add_parser("describe", help="show a resource with its conditions and events")
    p.add_argument("kind")
    p.add_argument("name")
    _common(p)
    p.set_defaults(handler=_run(describe))

    p = subparsers.add_parser("delete", help="delete resources by name or from files")
    p.add_argument("kind", nargs="?")
    p.add_argument("names", nargs="*")
    p.add_argument("-f", "--filename", action="append")
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until finalizers let the object go (default: yes)",
    )
    p.add_argument("--timeout", type=float, default=DELETE_WAIT_S, help="seconds to wait")
    _common(p)
    p.set_defaults(handler=_run(delete))

    for verb, fn, text in (
        ("start", start, "start a VirtualMachine (runStrategy Always)"),
        ("stop", stop, "stop a VirtualMachine (runStrategy Halted)"),
        ("restart", restart, "restart a VirtualMachine (its VMI is replaced)"),
        ("pause", pause, "pause a running VirtualMachine's guest"),
        ("unpause", unpause, "resume a paused VirtualMachine's guest"),
    ):
        p = subparsers.add_parser(verb, help=text)
        p.add_argument("name", help="VirtualMachine name")
        _common(p)
        p.set_defaults(handler=_run(fn))

    p = subparsers.add_parser("console", help="attach to a VirtualMachine's serial console")
    p.add_argument("name", help="VirtualMachine (or VMI) name")
    p.add_argument("--agent", help="talk to this node agent instead of the VMI's own node")
    _common(p)
    p.set_defaults(handler=console)

    from controllers import image_upload

    image_upload.register(subparsers)
