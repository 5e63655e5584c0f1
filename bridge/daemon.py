"""Daemon: wires config, state, Tempo, the sender, the scheduler and the web server together."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
import tenacity

from bridge import __version__
from bridge.components import limits, load_rules, open_state, receiver_client, tempo_client
from bridge.config import Config, load_config
from bridge.doctor import check_clock_skew
from bridge.engine import Engine, rule_key
from bridge.errors import ConfigError, StateError
from bridge.metrics import Metrics
from bridge.redact import display_url
from bridge.rulefmt import DEFAULT_INTERVAL
from bridge.rules import Group
from bridge.scheduler import Scheduler
from bridge.sender import Sender, encoder
from bridge.status import Clock, GroupStatus, Reload, RuleStatus, Status, StatusBoard
from bridge.systemd import Notifier
from bridge.tempo import ClockSkew
from bridge.web import WebServer
from bridge.worker import Worker, run_on

log = structlog.get_logger("bridge.daemon")

MAINTENANCE_INTERVAL = 3600
"""Seconds between two sweeps of the state for what its retention let go."""

class Daemon:
    """One running tempo-bridge: evaluates rules on schedule until :meth:`stop`."""

    def __init__(
        self,
        config_path: Path,
        config: Config,
        groups: list[Group],
        *,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.metrics = Metrics()
        self._clock = clock
        self._sleep = sleep
        self._stopping = asyncio.Event()
        self._ready = False
        self.status = StatusBoard(Status(
            version=__version__, started=clock(), config_file=str(config_path),
            tempo_url=display_url(config.tempo.url),
            receiver_url=display_url(config.remote_write.url),
        ))
        self.state = open_state(config, exclusive=True)
        self._clock_level = "OK"
        # parsing, evaluating and encoding run off the event loop, and so do the calls into
        # the state database, on a thread of their own (see bridge.worker)
        self.worker = Worker()
        self.state_worker = Worker("state")
        self.tempo = tempo_client(config, on_clock_skew=self._clock_skew, worker=self.worker,
                                  canonical=self.state.canonical)
        self.receiver = receiver_client(config)
        encode = encoder(dict(config.remote_write.external_labels),
                         config.remote_write.max_samples_per_send)
        # tempo-bridge 0.1 left its outbox a row per sample: send it as requests too
        self.state.convert_legacy_outbox(lambda samples: encode(samples, {}))
        self.sender = Sender(
            self.state,
            self.receiver,
            self.metrics,
            max_sample_age=config.remote_write.max_sample_age,
            clock=clock,
            status=self.status,
            state_worker=self.state_worker,
        )
        self.engine = Engine(
            self.tempo,
            self.state,
            self.metrics,
            limits=limits(config),
            max_sample_age=config.remote_write.max_sample_age,
            retention=config.state_retention,
            clock=clock,
            encode=encode,
            on_commit=self.sender.enqueue,
            status=self.status,
            worker=self.worker,
            state_worker=self.state_worker,
        )
        self.scheduler = Scheduler(self.engine.evaluate_group, clock=clock)
        self._sender_alive = False
        self.web = WebServer(self.metrics.registry, self.reload, lambda: self.ready,
                             self.status.snapshot, clock=clock)
        self._groups = groups
        self.notifier = notifier if notifier is not None else Notifier.from_environ()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or :meth:`stop`); SIGHUP reloads the rules."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        sender = asyncio.create_task(self._run_sender(), name="sender")
        watchdog = asyncio.create_task(self.notifier.run_watchdog(), name="watchdog")
        try:
            await self.web.start(self.config.web.listen_address)
            self._set_groups(self._groups)
            self._reloaded(None)
            await self._retire_absent()
            self.scheduler.start(self._groups)
            await self._maintain()
            self.scheduler.every("state maintenance", MAINTENANCE_INTERVAL, self._maintain)
            self._ready = True
            log.info(
                "started", listen_address=self.config.web.listen_address,
                port=self.web.port, groups=len(self._groups),
                state=str(self.state.path),
            )
            self.notifier.ready(self._status())
            await self._stopping.wait()
        finally:
            self._ready = False
            log.info("stopping")
            self.notifier.stopping("stopping")
            await self.scheduler.stop()
            sender.cancel()
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await self.web.stop()
            await self.tempo.aclose()
            await self.receiver.aclose()
            self.worker.close()
            self.state_worker.close()
            self.state.close()  # after a call still under way on the state's worker, if any
            self.notifier.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            log.info("stopped")

    def stop(self) -> None:
        self._stopping.set()

    @property
    def ready(self) -> bool:
        """Started, not stopping, and the sender running."""
        return self._ready and self._sender_alive

    async def _run_sender(self) -> None:
        """Run the sender; an unexpected error is logged and counted, and the sender is
        started again after a backoff (1 s doubling to 30 s). Meanwhile the bridge is not
        ready, and the samples wait in the outbox."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(Exception),
            wait=tenacity.wait_exponential(multiplier=1, max=30),
            before_sleep=self._sender_failed,
            sleep=self._sleep,
        )
        async for attempt in retrying:
            with attempt:
                self._sender_alive = True
                self.status.sender(True)
                await self.sender.run()

    def _sender_failed(self, retry: tenacity.RetryCallState) -> None:
        self._sender_alive = False
        self.status.sender(False)
        self.metrics.sender_restarts.inc()
        error = retry.outcome.exception() if retry.outcome else None
        wait = retry.next_action.sleep if retry.next_action else 0.0
        log.error("sender failed, restarting it", error=repr(error), restart_in=round(wait, 1),
                  exc_info=error)

    async def _maintain(self) -> None:
        """Drop the state of rules removed longer ago than ``state_retention``, and the
        label sets and sent marks nothing needs any more."""
        cutoff = self._clock() - self.config.state_retention
        try:
            gone = await run_on(self.state_worker, self.state.forget_removed, before=cutoff)
            dropped = await run_on(self.state_worker, self.state.collect_garbage)
        except StateError as exc:
            log.error("state maintenance failed", error=str(exc))
            return
        self.metrics.rules_forgotten.inc(len(gone))
        if gone or dropped:
            log.info("state maintenance", rules_forgotten=[f"{k.group}/{k.record}" for k in gone],
                     series_forgotten=dropped)

    async def reload(self) -> str | None:
        """Re-read the rule files; a bad file keeps the running rules and is reported.

        systemd is told RELOADING=1 before and READY=1 after, whatever the outcome.
        """
        self.notifier.reloading("reloading the rules")
        error = None
        try:
            error = await self._reload()
            return error
        finally:
            self.notifier.ready(self._status(error and "reload failed, previous rules kept"))

    def _status(self, note: str | None = None) -> str:
        """The one-line STATUS= for systemctl status."""
        rules = sum(len(g.rules) for g in self._groups)
        status = f"{len(self._groups)} rule groups, {rules} rules"
        return f"{status}; {note}" if note else status

    async def _reload(self) -> str | None:
        try:
            config = load_config(self.config_path)
            groups = load_rules(config)
        except ConfigError as exc:
            self._reloaded(str(exc))
            log.error("reload failed, previous rules kept", error=str(exc))
            return str(exc)
        self._set_groups(groups)
        self.scheduler.replace(groups)
        await self._retire_absent()
        self._reloaded(None)
        log.info("rules reloaded", groups=len(groups))
        return None

    async def _retire_absent(self) -> None:
        """Rules the state holds that are not in the rule files any more (removed, or
        their identity edited) end their series with stale markers and start their
        retention."""
        loaded = {rule_key(g, r) for g in self._groups for r in g.rules}
        for known in await run_on(self.state_worker, self.state.known_rules):
            if known.removed_at is None and known.key not in loaded:
                await self.engine.retire(known.key, known.interval or DEFAULT_INTERVAL)

    def _clock_skew(self, skew: ClockSkew) -> None:
        """Tempo answered: export how far its clock is from this host's, and log when the
        skew starts (or stops) eating into the groups' margin ``query_offset -
        query_end_cutoff - ingest_delay`` (windows would be read before Tempo has them)."""
        self.metrics.tempo_clock_skew.set(skew.estimate)
        self.metrics.tempo_clock_skew_certain.set(skew.certain)
        (finding,) = check_clock_skew(skew, self.config, self._groups)
        self.status.clock(Clock(skew.at, skew.estimate, skew.certain, finding.level,
                                finding.message))
        if finding.level == self._clock_level:
            return
        self._clock_level = finding.level
        emit = {"OK": log.info, "WARN": log.warning}.get(finding.level, log.error)
        emit("Tempo's clock", level=finding.level, skew=round(skew.estimate, 3),
             message=finding.message)

    def _reloaded(self, errors: str | None) -> None:
        """Record the outcome of loading the rules (at start or on reload)."""
        now = self._clock()
        self.status.reloaded(Reload(now, errors is None, errors))
        self.metrics.reload_success.set(errors is None)
        if errors is None:
            self.metrics.reload_timestamp.set(now)

    def _set_groups(self, groups: list[Group]) -> None:
        self.status.set_groups([
            GroupStatus(
                name=g.name, file=g.file, interval=g.interval, query_offset=g.query_offset,
                settle=g.settle, tenant=g.tenant, labels=dict(g.labels),
                rules=[RuleStatus(r.record, r.kind, r.expr, dict(r.labels)) for r in g.rules],
            )
            for g in groups
        ])
        self._groups = groups
        self.metrics.rule_groups.set(len(groups))
        self.metrics.rules.set(sum(len(g.rules) for g in groups))
