"""The executor of a run on Citus worker nodes: the driver (on the coordinator) opens one connection per
segment, as the calling role, to the node holding that segment's shard, and sends each of the segment's
requests as one call of ``internal_node_call`` (segment.node) with the model state as binary parameters;
the node's session runs it (training reads the shard there, and caches it in that session's GD for the
run). All connections are driven from one loop (non-blocking libpq through psycopg), with the driver's
cancel and client-gone check between polls, as background workers are.

The connections authenticate as Citus's own connections between nodes do (the server's password file,
``citus.node_conninfo``): the DBA configures nothing for madlib_dl."""

from __future__ import annotations

import ipaddress
import json
import re
import select
import socket
import time
from dataclasses import dataclass, replace
from typing import Callable

from madlib_dl import native, settings
from madlib_dl.errors import InvalidArgument
from madlib_dl.segment import hop_progress, requests
from madlib_dl.training import segment_calls, stored_state
from madlib_dl.training.executors import Completed, SegmentFailed

POLL_SECONDS = 0.1
TEXT, BYTEA = 25, 17
BINARY = 1


@dataclass(frozen=True)
class Shard:
    """Where a segment of a packed table lives: its node, and the shard's name there, schema-qualified
    and quoted (Citus's shard_name())."""
    host: str
    port: int
    name: str


def shards(db, table, keys) -> dict[int, Shard]:
    """segment key -> its shard of ``table`` (a PackedTable's TableName)."""
    found = {}
    for key in keys:
        rows = db.execute("SELECT p.nodename AS host, p.nodeport AS port, pg_catalog.shard_name($1::regclass, "
                          "p.shardid, false) AS name FROM pg_catalog.pg_dist_shard_placement p WHERE p.shardid = "
                          "pg_catalog.get_shard_id_for_distribution_column($1::regclass, $2)",
                          [table.sql(db), key], ["text", "integer"])
        if not rows:
            raise InvalidArgument(f"{table}: segment {key} has no shard placement")
        found[key] = Shard(rows[0]["host"], int(rows[0]["port"]), rows[0]["name"])
    return found


class _Node:
    """A session on a worker node, serving some of the segments whose shards are there (one each,
    unless the host has fewer CPUs than segments), and what it is doing."""

    def __init__(self, segments: list[int], shard: Shard, conninfo: str):
        self.segments, self.shard, self.conninfo = segments, shard, conninfo
        self.segment = segments[0]  # the one errors name until a call names its own
        pooled = _pooled(conninfo)
        self.reused = pooled is not None  # TensorFlow may run there already, with its threads
        self.conn = pooled or _connect(self.segment, shard, conninfo)
        self.pid = self.conn.pgconn.backend_pid
        self.busy: tuple | None = None  # (call, submitted)
        self.sending = False  # the request is not all in the socket yet
        self.steps: list = []  # the busy call's calls still to send: (header, blobs)
        self.sent: dict = {}   # the header of the step last sent
        self.reply = None      # a reply read in pieces: (header, its blobs as they fill)
        self.reports: list = []  # the busy call's progress reports, as NOTICEs brought them (segment.node)
        self.conn.add_notice_handler(self.heard)

    def heard(self, diagnostic) -> None:
        report = hop_progress.from_notice(diagnostic.message_primary)
        if report is not None:
            self.reports.append(report)

    def keep(self):
        """The connection, for the session's next run (its next _Node hears its NOTICEs)."""
        self.conn.remove_notice_handler(self.heard)
        return self.conn

    def flush(self) -> None:
        """Hand libpq's queued request to the socket, as much as it takes now (the connection is
        non-blocking: a state of hundreds of MB goes out over several polls)."""
        try:
            self.sending = self.conn.pgconn.flush() == 1
        except Exception as error:  # psycopg.OperationalError
            raise self.broken(error) from None

    @property
    def where(self) -> str:
        return f"{self.shard.host}:{self.shard.port}"

    def broken(self, error) -> SegmentFailed:
        """The error of a connection that broke: the node stopped, restarted or cannot be reached."""
        detail = " ".join(str(error).split()) or "no reason given"
        return SegmentFailed(f"segment {self.segment}: lost its connection to the Citus worker node {self.where} "
                             f"({detail})", "08006")


# A session's node connections, kept after a successful run for its next call (as background workers
# are): (identity, conninfo) -> idle connections. While kept, their node sessions end themselves after
# madlib_dl.worker_idle_timeout (idle_session_timeout, set only then: a segment may wait longer than that
# between its hops), and a connection found closed is replaced. A kept session keeps its TensorFlow threads.
_POOL: dict[tuple, list] = {}


def _pooled(conninfo: str):
    key = (native.caller(), conninfo)
    while _POOL.get(key):
        conn = _POOL[key].pop()
        try:  # a node session that ended (idle timeout, restart) fails here; a live one waits again
            conn.execute("SELECT pg_catalog.set_config('idle_session_timeout', '0', false)")
            return conn
        except Exception:
            conn.close()
    return None


def forget_unless(identity: tuple) -> None:
    """A session whose identity changed (SET ROLE) closes its idle node connections: they act as the
    identity they were opened for."""
    for key in [k for k in _POOL if k[0] != identity]:
        for conn in _POOL.pop(key):
            conn.close()


def _connect(segment: int, shard: Shard, conninfo: str):
    import psycopg

    try:
        return psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as error:
        reason = " ".join(str(error).split())
        if AUTHENTICATION.search(reason):  # not a node that is down: what is missing is said, and no resume offered
            raise SegmentFailed(f"segment {segment}: cannot connect to its Citus worker node {shard.host}:{shard.port} "
                                f"as this role: {reason}. madlib_dl connects as Citus's own connections between nodes "
                                "do (libpq as the server's OS user: its password file, certificates and "
                                "citus.node_conninfo); a password kept only in pg_dist_authinfo is not used",
                                "28000") from None
        raise SegmentFailed(f"segment {segment}: cannot connect to its Citus worker node {shard.host}:{shard.port}: "
                            f"{reason}", "08006") from None


class CitusNodes:
    name = "citus"

    def __init__(self, db, schema: str, tables: dict, check, idle_timeout: float, threads: int | None = None):
        """``tables``: the run's packed tables by the kind its calls name them ('train' first), all
        distributed and colocated; ``idle_timeout``: seconds the node sessions wait for the session's
        next call after the run."""
        self.db, self.schema, self._check = db, schema, check
        self.on_progress = None  # (call, report): a running hop's progress, from its node's NOTICEs
        first = next(iter(tables.values()))
        self.segments = sorted(first.segments)
        self.threads = threads
        self._call_bytes = settings.read(db, settings.NODE_CALL_MB) << 20
        placed = {kind: shards(db, t.table, self.segments) for kind, t in tables.items()}
        conninfo = _conninfo(db, schema)
        self._idle_ms = int(idle_timeout * 1000)
        self._sessions: list[_Node] = []
        self._of: dict[int, _Node] = {}  # segment -> the session serving it
        try:
            for shard, segments in sessions(placed[next(iter(tables))], _local_cpus):
                node = _Node(segments, shard, f"{conninfo} host={shard.host} port={shard.port}")
                self._sessions.append(node)
                self._of.update({segment: node for segment in segments})
            self._local_tables = {(kind, segment): _local_ref(self._of[segment], t, placed[kind][segment])
                                  for kind, t in tables.items() for segment in self.segments}
        except BaseException:
            self.close()
            raise
        self.worker_count = len(self._sessions)
        self.pids = {s: n.pid for s, n in self._of.items()}
        self.nodes = sorted({(n.shard.host, n.shard.port) for n in self._sessions})
        self._queues: dict[int, list] = {id(n): [] for n in self._sessions}
        self._sql = f"SELECT {db.quote_ident(schema)}.internal_node_call($1, $2, $3)".encode()  # one record

    def count_calls(self, kind: str) -> list:
        """One call per segment counting its shard's buffers and examples of table ``kind``, as the
        node's session sees them (its committed data)."""
        return [segment_calls.SegmentCall(s, requests.CountRows(self._local_tables[(kind, s)])) for s in self.segments]

    # -- the executor protocol (training.workers) ------------------------------------------------------

    def submit(self, call) -> None:
        node = self._of.get(call.segment)
        if node is None:
            raise InvalidArgument(f"internal: segment {call.segment} is not one of this run's")
        if node.busy is not None:
            self._queues[id(node)].append(call)
        else:
            self._send(node, call)

    def busy(self) -> bool:
        return any(n.busy is not None for n in self._sessions)

    def wait(self) -> list[Completed]:
        while True:
            done = self._collect()
            if done:
                return done
            _poll([n for n in self._sessions if n.busy is not None])
            if native.cancel_pending():
                self.close()  # the check below may raise past every Python handler (native.cancel_pending)
                self._check()
                raise SegmentFailed("canceling statement: a cancel is pending", "57014")  # if the check did not
            self._check()

    def set_progress(self, text: str) -> None:
        pass  # the node sessions show their call (internal_node_call) in pg_stat_activity

    def finish(self, run_id: str | None) -> None:
        """After a successful run: drop the run from every node session, and keep the connections for
        the session's next call (their sessions keep TensorFlow loaded). A session lost now is closed;
        the run stands."""
        if run_id is not None:
            for segment in self.segments:
                self.submit(segment_calls.release_call(segment, run_id))
        kept = []
        for node in list(self._sessions):
            try:
                while node.busy is not None:
                    self._finish_one(node)
                if self._idle_ms > 0:
                    node.conn.execute("SELECT pg_catalog.set_config('idle_session_timeout', %s, false)",
                                      [str(self._idle_ms)])
                    kept.append(node)
                    continue
            except Exception:  # noqa: BLE001 - a session gone after the run's work: not kept, the run stands
                pass
            node.conn.close()
        identity = native.caller()
        forget_unless(identity)
        for node in kept:
            _POOL.setdefault((identity, node.conninfo), []).append(node.keep())
        self._sessions, self._of = [], {}

    def _finish_one(self, node: _Node) -> None:
        """Wait for this session's calls (its release) to end."""
        while node.busy is not None:
            _poll([node])
            self._collect_one(node)

    def close(self) -> None:
        from psycopg import pq

        for node in self._sessions:
            if node.busy is not None and node.conn.pgconn.status == pq.ConnStatus.OK:
                try:  # stops the node session's hop at its next interrupt check
                    node.conn.cancel_safe(timeout=CANCEL_TIMEOUT)
                except Exception:  # noqa: BLE001 - a node that is gone has nothing left to cancel
                    pass
            node.conn.close()
        self._sessions, self._of = [], {}

    # -- sending and receiving -------------------------------------------------------------------------

    def _send(self, node: _Node, call) -> None:
        """Start a call: its request in one call of internal_node_call, or, when its state is larger than
        one call carries, the state's pieces first (node.steps) and then the request."""
        request = self._for_node(call.segment, call.request)
        header, blobs = requests.encode(request)
        values = [stored_state.as_value(b) for b in blobs]  # a memory file read, not mapped
        header["reply_limit"] = self._call_bytes
        if sum(len(v) for v in values) <= self._call_bytes:
            node.steps = [(header, values)]
        else:
            node.steps = [({"piece": [i, offset]}, [value[offset:offset + self._call_bytes]])
                          for i, value in enumerate(values) for offset in range(0, len(value), self._call_bytes)]
            node.steps.append(({**header, "pieces": True}, []))
        node.busy = (call, time.time())
        node.segment = call.segment
        node.reply = None
        self._step(node)

    def _step(self, node: _Node) -> None:
        """Send the call's next step."""
        header, values = node.steps.pop(0)
        node.sent = header
        values = list(values) + [None] * (2 - len(values))
        try:
            node.conn.pgconn.send_query_params(self._sql, [json.dumps(header).encode(), values[0], values[1]],
                                               param_types=[TEXT, BYTEA, BYTEA], param_formats=[BINARY] * 3,
                                               result_format=BINARY)
        except Exception as error:  # psycopg.OperationalError: the connection is gone
            raise node.broken(error) from None
        node.flush()

    def _for_node(self, segment: int, request):
        """The request as this segment's node session serves it: the run's tables as the node's shards
        (a table per kind and segment, the session's segments having shards of their own), and a fit's
        state never written over (it arrives as bytes)."""
        if isinstance(request, requests.BeginRun):
            tables = {_local_kind(kind, s): self._local_tables[(kind, s)]
                      for kind in request.tables for s in self._of[segment].segments}
            return replace(request, tables=tables)
        if isinstance(request, requests.Fit):
            return replace(request, table=_local_kind(request.table, segment), overwrite_state=False)
        if isinstance(request, requests.Evaluate):
            return replace(request, table=_local_kind(request.table, segment))
        if isinstance(request, requests.Start):  # the node's CPUs shared by the run's sessions on its host
            node = self._of[segment]
            if node.reused:  # its TensorFlow keeps the threads it started with
                return replace(request, threads=None, worker_session=True, host_share=None)
            share = sum(1 for n in self._sessions if n.shard.host == node.shard.host)
            return replace(request, worker_session=True, host_share=share)
        return request

    def _collect(self) -> list[Completed]:
        done = []
        for node in self._sessions:
            if node.busy is not None:
                done += self._collect_one(node)
        return done

    def _collect_one(self, node: _Node) -> list[Completed]:
        """The session's call, if its result is in (a step of a call in pieces sends the next step)."""
        pgconn = node.conn.pgconn
        try:
            pgconn.consume_input()
            busy = pgconn.is_busy()  # NOTICEs that came are handled here (node.heard)
        except Exception as error:  # psycopg.OperationalError: the node or the network went away
            raise node.broken(error) from None
        reports, node.reports = node.reports, []
        if self.on_progress is not None:
            for report in reports:
                self.on_progress(node.busy[0], report)
        try:
            if busy:
                return []
            results = []
            while (result := pgconn.get_result()) is not None:
                results.append(result)
        except Exception as error:  # psycopg.OperationalError: the node or the network went away
            raise node.broken(error) from None
        call, submitted = node.busy
        header, blobs = _result(results, call.segment, node)
        if self._more(node, header, blobs):
            return []
        node.busy = None
        if node.reply is not None:  # the reply's blobs, read in pieces
            header, blobs = node.reply[0], [bytes(b) for b in node.reply[1] if b is not None]
            node.reply = None
        reply = requests.decode(header, blobs[:len(header.get("blobs", []))])
        row = {**reply.row, "node": node.where}
        completed = Completed(call, row, submitted, time.time(), reply.weights, reply.optimizer_state)
        if self._queues[id(node)]:
            self._send(node, self._queues[id(node)].pop(0))
        return [completed]

    def _more(self, node: _Node, header: dict, blobs: list) -> bool:
        """Whether the call goes on: a piece sent (the next step follows), the request's reply larger than
        one call (its pieces are asked for), or one of those pieces (copied into place)."""
        if "get" in node.sent:  # a piece of the reply came
            index, offset, _ = node.sent["get"]
            node.reply[1][index][offset:offset + len(blobs[0])] = blobs[0]
        elif "pieces" in header:  # the reply waits on the node: read it in pieces
            sizes = header.pop("pieces")
            node.reply = (header, [None if size is None else bytearray(size) for size in sizes])
            node.steps = [({"get": [i, offset, self._call_bytes]}, []) for i, size in enumerate(sizes)
                          if size is not None for offset in range(0, size, self._call_bytes)]
        if not node.steps:
            return False
        self._step(node)
        return True


def _poll(busy: list[_Node]) -> None:
    """Wait up to POLL_SECONDS for a reply on these sessions' connections, handing on what their
    sockets take of requests still being sent."""
    sending = [n for n in busy if n.sending]
    select.select([n.conn.pgconn.socket for n in busy], [n.conn.pgconn.socket for n in sending], [], POLL_SECONDS)
    for node in sending:
        node.flush()


def _local_kind(kind: str, segment: int) -> str:
    return f"{kind}@{segment}"


def sessions(placed: dict[int, Shard], cpus: Callable[[str], int | None]) -> list[tuple[Shard, list[int]]]:
    """The node sessions of a run: (the node, the segments it serves). One per segment, except on a host
    whose CPUs (``cpus(host)``, None: unknown) are fewer than the run's segments there (several nodes on
    one machine): then as many sessions as CPUs, shared among its nodes by their segments, at least one
    each (as background workers on one server serve more segments than CPUs)."""
    by_node: dict[tuple, list[int]] = {}
    shards_of: dict[tuple, Shard] = {}
    for segment, shard in sorted(placed.items()):
        by_node.setdefault((shard.host, shard.port), []).append(segment)
        shards_of.setdefault((shard.host, shard.port), shard)
    chosen = []
    for host in sorted({host for host, _ in by_node}):
        nodes = sorted(n for n in by_node if n[0] == host)
        total = sum(len(by_node[n]) for n in nodes)
        limit = max(len(nodes), min(total, cpus(host) or total))
        share = {n: limit * len(by_node[n]) / total for n in nodes}
        count = {n: max(1, int(share[n])) for n in nodes}
        for n in sorted(nodes, key=lambda n: share[n] - int(share[n]), reverse=True):  # the largest remainders
            if sum(count.values()) < limit and count[n] < len(by_node[n]):
                count[n] += 1
        for n in nodes:
            chosen += [(shards_of[n], by_node[n][i::count[n]]) for i in range(count[n])]
    return chosen


def _local_cpus(host: str) -> int | None:
    """This machine's CPUs when ``host`` is this machine (a loopback address), else None (unknown)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return None
    if addresses and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        return settings.cpu_count()
    return None


def _result(results, segment: int, node: _Node) -> tuple[dict, list]:
    """The header and blobs of a call's result row, or the error it got."""
    from psycopg import pq

    error = next((r for r in results if r.status == pq.ExecStatus.FATAL_ERROR), None)
    if error is not None:
        message = (error.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode(errors="replace")
        sqlstate = error.error_field(pq.DiagnosticField.SQLSTATE)
        if sqlstate is None or node.conn.pgconn.status != pq.ConnStatus.OK:  # libpq's own: the connection broke
            raise node.broken(message or (error.error_message or b"").decode(errors="replace"))
        raise SegmentFailed(f"segment {segment} on {node.where}: {message}", sqlstate.decode())
    if not results:
        raise node.broken("no result")
    header, *blobs = _record(results[-1].get_value(0, 0))
    return json.loads(bytes(header).decode()), [bytes(b) for b in blobs if b is not None]


def _record(value) -> list:
    """The fields of a record in PostgreSQL's binary format (a count, then each field's type OID, length
    (-1: NULL) and bytes), as memoryviews of ``value``."""
    data = memoryview(value)
    count = int.from_bytes(data[0:4], "big")
    fields, at = [], 4
    for _ in range(count):
        length = int.from_bytes(data[at + 4:at + 8], "big", signed=True)
        at += 8
        fields.append(None if length < 0 else data[at:at + length])
        at += max(length, 0)
    return fields


def _local_ref(node: _Node, table, shard: Shard) -> requests.TableRef:
    """The segment's shard as the node's session reads it (its schema, name and OID there)."""
    # Not from pg_class: Citus hides shards there from sessions of other applications than its own.
    row = node.conn.execute("SELECT a.object_names[1], a.object_names[2], r.oid FROM (SELECT "
                            "pg_catalog.to_regclass(%s)::pg_catalog.oid AS oid) r, LATERAL "
                            "pg_catalog.pg_identify_object_as_address('pg_catalog.pg_class'::pg_catalog.regclass, "
                            "r.oid, 0) a WHERE r.oid IS NOT NULL", [shard.name]).fetchone()
    if row is None:
        raise SegmentFailed(f"segment {node.segment}: its shard {shard.name} is not on {shard.host}:{shard.port} for "
                            "this role", "42P01")
    schema, name, oid = row
    return requests.TableRef(schema, name, table.dependent, table.independent, int(oid), False,
                             dependents=table.dependents, independents=table.independents)


# A node that stops answering (its host down, the network cut) fails the call within about 10 s:
# TCP keepalives while a hop runs (5 s idle, then 2 probes 2 s apart) and a limit on unacknowledged
# sends. A node that stops (pg_ctl stop, a crash) closes the connection at once.
KEEPALIVES = "keepalives=1 keepalives_idle=5 keepalives_interval=2 keepalives_count=2 tcp_user_timeout=10000"
CONNECT_TIMEOUT = 10
CANCEL_TIMEOUT = 5  # seconds a cancel of a node's call may take before the connection is just closed
AUTHENTICATION = re.compile(r"password|authentication|no pg_hba\.conf entry|certificate|role .* does not exist", re.I)


def _conninfo(db, schema: str) -> str:
    """How to connect to a node: as the current role, to this database, with Citus's node_conninfo (a
    superuser's setting, read through internal_node_conninfo) and libpq's defaults besides (the server
    OS user's password file and certificates). NOTICEs reach the driver whatever the role's
    client_min_messages says: a hop's progress comes as NOTICEs (segment.node)."""
    row = db.execute(f"SELECT current_user AS role, current_database() AS database, "
                     f"{db.quote_ident(schema)}.internal_node_conninfo() AS extra")[0]
    parts = [f"user={_quoted(row['role'])}", f"dbname={_quoted(row['database'])}", "application_name=madlib_dl_node",
             "options='-c jit=off -c client_min_messages=notice'", KEEPALIVES, f"connect_timeout={CONNECT_TIMEOUT}"]
    return " ".join(parts + ([row["extra"]] if row["extra"] else []))


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
