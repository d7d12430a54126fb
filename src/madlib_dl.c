/*
 * madlib_dl.c: the extension's only C code. It lets the Python driver start PostgreSQL dynamic
 * background workers, notice a dead client and write model states without copying them through Python;
 * everything else stays in Python.
 *
 *   madlib_dl_launch_worker(token text) -> int4   start one worker, return its pid (NULL: no free slot)
 *   madlib_dl_worker_main(Datum)                  the worker: calls <schema>.internal_worker_serve(token)
 *                                                 in a loop, one transaction per call, until it returns
 *                                                 false or NULL
 *   madlib_dl_client_connected() -> bool          false once the client of this backend has gone away
 *   madlib_dl_define_setting(...)                 register one madlib_dl.* setting as a real custom
 *                                                 setting (SHOW works, SET checks the value); its name,
 *                                                 range and default come from madlib_dl/settings.py;
 *                                                 the DBA's caps (CAPS, madlib_dl.max_*) are
 *                                                 superuser-only, decided here
 *   madlib_dl_reserve_settings()                  after the last one: madlib_dl.<typo> is an error
 *   madlib_dl_take_file(token text) -> bytea      a value this backend's Python handed over as a range of
 *                                                 a memory file (a model state from a worker), read
 *                                                 straight into the datum; NULL for any other token
 *   an emit_log_hook                              drops PL/Python's traceback from madlib_dl's own errors
 *                                                 ("madlib_dl: ..."): PL/Python has no way to omit it
 *
 * A worker connects to the caller's database as the caller's current user (or, when that role may not
 * log in, as its session user, then takes the role), so it has exactly the caller's privileges: no
 * login, no password, no pg_hba entry. Launches are armed by madlib_dl's Python in the same backend
 * (madlib_dl_arm_launch, through ctypes), never by SQL alone; see "Who a worker is" below.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "libpq/libpq.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/autovacuum.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/array.h"
#include "utils/elog.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(madlib_dl_launch_worker);
PG_FUNCTION_INFO_V1(madlib_dl_client_connected);
PG_FUNCTION_INFO_V1(madlib_dl_define_setting);
PG_FUNCTION_INFO_V1(madlib_dl_reserve_settings);
PG_FUNCTION_INFO_V1(madlib_dl_take_file);
PGDLLEXPORT void madlib_dl_worker_main(Datum main_arg);
void		_PG_init(void);

static emit_log_hook_type previous_emit_log_hook = NULL;
static void quiet_own_errors(ErrorData *edata);

void
_PG_init(void)
{
	previous_emit_log_hook = emit_log_hook;
	emit_log_hook = quiet_own_errors;
}

/*
 * Who a worker is. It acts as exactly the caller's current user, taken here from the backend's own state
 * (never from a message the Python side could be made to send): it logs in as that role when the role
 * may log in, so that nothing run in the worker (RESET ROLE, SET ROLE NONE) reaches any other role;
 * when the current role is NOLOGIN (a group role the caller SET ROLE to), it logs in as the caller's
 * session user and takes the role in C before any SQL runs: what the caller itself can undo, no more.
 * No worker starts where the caller's identity is one it cannot undo (launch_refusal): inside a
 * security-restricted operation (index expressions run by ANALYZE, VACUUM, REINDEX, CREATE INDEX;
 * REFRESH MATERIALIZED VIEW; autovacuum), inside a SECURITY DEFINER function, or in a madlib_dl worker.
 */
#define WORKER_TYPE "madlib_dl worker"
#define IDLE_APPLICATION_NAME "madlib_dl worker (idle)"
#define DEFAULT_WORKERS_PER_ROLE 6
#define GIVE_WAY_MS 3000		/* how long a launch short of a slot or of the role's cap waits for one */
#define ASK_EVERY_MS 1000		/* how often it asks another idle worker to give way meanwhile */

/* What a worker gets from its launcher, in bgw_extra (BGW_EXTRALEN = 128 bytes). */
typedef struct WorkerArgs
{
	Oid			database;		/* the caller's database */
	Oid			login;			/* the role the worker logs in as */
	Oid			role;			/* InvalidOid, or the role it takes before anything runs */
	char		token[BGW_EXTRALEN - 3 * sizeof(Oid)];	/* NUL-terminated */
} WorkerArgs;

StaticAssertDecl(sizeof(WorkerArgs) <= BGW_EXTRALEN, "WorkerArgs must fit in bgw_extra");

/*
 * Plain C entry points for madlib_dl's Python in the same process (through ctypes; no SQL function
 * reaches them, and plpython3u is untrusted, so no plain role can call them). None of them can raise
 * an error. The launcher starts a worker only for the token armed last; a worker serves only its own.
 */
static char armed_token[BGW_EXTRALEN];
static WorkerArgs this_worker;	/* in a madlib_dl worker: what its launcher gave it */
static bool in_worker = false;
static volatile sig_atomic_t give_way_requested = false;

PGDLLEXPORT int madlib_dl_arm_launch(const char *token);
PGDLLEXPORT int madlib_dl_launch_refusal(void);
PGDLLEXPORT void madlib_dl_caller(Oid *session, Oid *current, int *context);
PGDLLEXPORT const char *madlib_dl_worker_token(void);
PGDLLEXPORT int madlib_dl_take_give_way_request(void);

/* Allow one launch, of this token (the next launch consumes it); -1 when it is too long. */
int
madlib_dl_arm_launch(const char *token)
{
	armed_token[0] = '\0';
	if (token == NULL || strlen(token) >= sizeof(this_worker.token))
		return -1;
	strlcpy(armed_token, token, sizeof(armed_token));
	return 0;
}

/* 0 when this backend may start workers, else why not (see background.py: REFUSALS). */
int
madlib_dl_launch_refusal(void)
{
	Oid			user;
	int			context;

	GetUserIdAndSecContext(&user, &context);
	if (IsAutoVacuumWorkerProcess())
		return 3;
	if (context & SECURITY_RESTRICTED_OPERATION)
		return 1;
	if (context & SECURITY_LOCAL_USERID_CHANGE)
		return 2;
	if (in_worker)
		return 4;
	if (context != 0)
		return 5;
	return 0;
}

void
madlib_dl_caller(Oid *session, Oid *current, int *context)
{
	*session = GetSessionUserId();
	GetUserIdAndSecContext(current, context);
}

/* The token this worker was started with; NULL outside a madlib_dl background worker. */
const char *
madlib_dl_worker_token(void)
{
	return in_worker ? this_worker.token : NULL;
}

/* Whether a launch of another session asked this worker to give its slot up (asked once, answered once). */
int
madlib_dl_take_give_way_request(void)
{
	int			asked = give_way_requested ? 1 : 0;

	give_way_requested = false;
	return asked;
}

static void
handle_give_way(SIGNAL_ARGS)
{
	int			save_errno = errno;

	give_way_requested = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

static bool
role_can_login(Oid role)
{
	HeapTuple	tuple = SearchSysCache1(AUTHOID, ObjectIdGetDatum(role));
	bool		can = false;

	if (HeapTupleIsValid(tuple))
	{
		can = ((Form_pg_authid) GETSTRUCT(tuple))->rolcanlogin;
		ReleaseSysCache(tuple);
	}
	return can;
}

/* The workers this backend launched (to count them before they show in the activity statistics). */
typedef struct Launched
{
	BackgroundWorkerHandle *handle;
	Oid			login;
} Launched;

static List *launched = NIL;

static pid_t
launched_pid(Launched *item)
{
	pid_t		pid = 0;

	if (GetBackgroundWorkerPid(item->handle, &pid) == BGWH_STARTED)
		return pid;
	return 0;
}

static bool
launched_here(pid_t pid)
{
	ListCell   *cell;

	foreach(cell, launched)
	{
		if (launched_pid((Launched *) lfirst(cell)) == pid)
			return true;
	}
	return false;
}

/*
 * The madlib_dl workers running as `login`: the activity statistics' (a worker shows there once it has
 * connected) and this backend's own that have not yet. With `ask` (and no slot for a launch), one idle
 * pooled worker of another session (of `login`, or of any role when `login` is InvalidOid) is asked to
 * give its slot up (SIGUSR2: it exits at once if it is still idle, else ignores it); *asked says whether.
 */
static int
madlib_dl_workers(Oid login, bool ask, bool *asked)
{
	int			count = 0;
	int			backends;
	ListCell   *cell;
	List	   *seen = NIL;

	if (asked)
		*asked = false;
	pgstat_clear_snapshot();
	backends = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= backends; i++)
	{
		LocalPgBackendStatus *local = pgstat_fetch_stat_local_beentry(i);
		PgBackendStatus *status;
		const char *type;

		if (local == NULL)
			continue;
		status = &local->backendStatus;
		if (status->st_backendType != B_BG_WORKER || status->st_procpid <= 0)
			continue;
		if (OidIsValid(login) && status->st_userid != login)
			continue;
		type = GetBackgroundWorkerTypeByPid(status->st_procpid);
		if (type == NULL || strcmp(type, WORKER_TYPE) != 0)
			continue;
		if (status->st_userid == login)
		{
			count++;
			seen = lappend_int(seen, status->st_procpid);
		}
		if (ask && !*asked && status->st_appname != NULL &&
			strcmp(status->st_appname, IDLE_APPLICATION_NAME) == 0 && !launched_here(status->st_procpid) &&
			kill(status->st_procpid, SIGUSR2) == 0)
			*asked = true;
	}
	foreach(cell, launched)
	{
		Launched   *item = (Launched *) lfirst(cell);
		pid_t		pid = launched_pid(item);

		if (pid != 0 && item->login == login && !list_member_int(seen, pid))
			count++;
	}
	list_free(seen);
	pgstat_clear_snapshot();	/* the caller's own view of the statistics is not this function's */
	return count;
}

/* Forget the handles of this backend's workers that have exited. */
static void
forget_exited(void)
{
	List	   *alive = NIL;
	ListCell   *cell;
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);	/* the list outlives the call */

	foreach(cell, launched)
	{
		Launched   *item = (Launched *) lfirst(cell);

		if (launched_pid(item) != 0)
			alive = lappend(alive, item);
		else
		{
			pfree(item->handle);
			pfree(item);
		}
	}
	list_free(launched);
	launched = alive;
	MemoryContextSwitchTo(old);
}

static int
workers_per_role(void)
{
	const char *text = GetConfigOption("madlib_dl.max_workers_per_role", true, false);
	char	   *end;
	long		value;

	if (text == NULL || *text == '\0')
		return DEFAULT_WORKERS_PER_ROLE;
	errno = 0;
	value = strtol(text, &end, 10);
	if (errno != 0 || end == text || value < 0 || value > INT_MAX)
		return DEFAULT_WORKERS_PER_ROLE;
	return (int) value;
}

Datum
madlib_dl_launch_worker(PG_FUNCTION_ARGS)
{
	char	   *token = text_to_cstring(PG_GETARG_TEXT_PP(0));
	WorkerArgs	args;
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle = NULL;
	BgwHandleStatus status;
	pid_t		pid;
	Oid			current = GetUserId();
	Oid			session = GetSessionUserId();
	int			refusal = madlib_dl_launch_refusal();
	bool		armed;
	int			cap = workers_per_role();
	TimestampTz deadline = 0;
	TimestampTz next_ask = 0;
	TimestampTz now;
	MemoryContext old;
	Launched   *item;

	memset(&args, 0, sizeof(args));
	if (strlen(token) >= sizeof(args.token))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("madlib_dl: token: expected at most %d bytes, got %d",
						(int) sizeof(args.token) - 1, (int) strlen(token))));
	armed = armed_token[0] != '\0' && strcmp(armed_token, token) == 0;
	armed_token[0] = '\0';		/* one launch per arming */
	if (!armed)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("madlib_dl: internal_launch_worker starts only the workers madlib_dl's own training asked for"),
				 errhint("Call madlib_dl's training functions; this one is internal.")));
	if (refusal != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("madlib_dl: no background worker starts from a security-restricted operation, a SECURITY "
						"DEFINER function, autovacuum or a madlib_dl worker"),
				 errhint("Call madlib_dl's functions from a session of their own.")));
	args.database = MyDatabaseId;
	if (role_can_login(current))
		args.login = current;
	else if (role_can_login(session))
	{
		args.login = session;
		args.role = current != session ? current : InvalidOid;
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("madlib_dl: no background worker can act as role %s: neither it nor the session user %s "
						"may log in", GetUserNameFromId(current, false), GetUserNameFromId(session, false))));
	strlcpy(args.token, token, sizeof(args.token));

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "madlib_dl");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "madlib_dl_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "madlib_dl worker for PID %d", MyProcPid);
	snprintf(worker.bgw_type, BGW_MAXLEN, WORKER_TYPE);
	worker.bgw_main_arg = (Datum) 0;
	memcpy(worker.bgw_extra, &args, sizeof(args));
	worker.bgw_notify_pid = MyProcPid;

	/*
	 * At most madlib_dl.max_workers_per_role of the role's workers at once (across its sessions), and
	 * only a free slot (max_worker_processes). Short of either, one idle pooled worker of another session
	 * (of this role for the cap, of any role for a slot) is asked to give way, and the launch waits for it
	 * up to GIVE_WAY_MS; else NULL. Two sessions of a role launching at the same instant can both pass
	 * the count: the cap can be exceeded by such a race, never by one session.
	 */
	forget_exited();
	for (;;)
	{
		bool		capped = madlib_dl_workers(args.login, false, NULL) >= cap;
		bool		asked;
		bool		registered = false;

		if (!capped)
		{
			/* the handle outlives this call: launched counts the worker until it shows in the statistics */
			old = MemoryContextSwitchTo(TopMemoryContext);
			registered = RegisterDynamicBackgroundWorker(&worker, &handle);
			MemoryContextSwitchTo(old);
		}
		if (registered)
			break;
		now = GetCurrentTimestamp();
		if (deadline == 0)
			deadline = TimestampTzPlusMilliseconds(now, GIVE_WAY_MS);
		else if (now >= deadline)
			PG_RETURN_NULL();
		/*
		 * Wait even when no idle worker was there to ask: workers of a run or session that just ended
		 * are still exiting, and their places free up in a moment. Ask again each ASK_EVERY_MS, one
		 * worker at a time, so that no more give way than this launch needs.
		 */
		if (now >= next_ask)
		{
			(void) madlib_dl_workers(capped ? args.login : InvalidOid, true, &asked);
			next_ask = TimestampTzPlusMilliseconds(now, ASK_EVERY_MS);
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 50, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	old = MemoryContextSwitchTo(TopMemoryContext);
	item = palloc(sizeof(Launched));
	item->handle = handle;
	item->login = args.login;
	launched = lappend(launched, item);
	MemoryContextSwitchTo(old);

	status = WaitForBackgroundWorkerStartup(handle, &pid);
	if (status == BGWH_POSTMASTER_DIED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("madlib_dl: cannot start a background worker without the postmaster")));
	if (status != BGWH_STARTED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("madlib_dl: the background worker could not be started"),
				 errhint("The server log may say why.")));
	PG_RETURN_INT32((int32) pid);
}

/*
 * The schema madlib_dl's install script created: the schema that is a member of the extension, as
 * madlib_dl/tools/cluster.py finds it. Not pg_extension.extnamespace (get_extension_schema): the control
 * file names no schema, so that is only the schema CREATE EXTENSION ran in, public as a rule.
 */
static Oid
extension_schema(Oid extension)
{
	Relation	rel;
	ScanKeyData key[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			schema = InvalidOid;

	rel = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ExtensionRelationId));
	ScanKeyInit(&key[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(extension));
	scan = systable_beginscan(rel, DependReferenceIndexId, true, NULL, 2, key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		Form_pg_depend depend = (Form_pg_depend) GETSTRUCT(tuple);

		if (depend->classid == NamespaceRelationId && depend->deptype == DEPENDENCY_EXTENSION)
		{
			schema = depend->objid;
			break;
		}
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return schema;
}

void
madlib_dl_worker_main(Datum main_arg)
{
	WorkerArgs	args;
	char	   *query = NULL;
	bool		more = true;

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));
	args.token[sizeof(args.token) - 1] = '\0';

	/* pg_terminate_backend and pg_cancel_backend act as in a normal backend, at CHECK_FOR_INTERRUPTS */
	pqsignal(SIGTERM, die);
	pqsignal(SIGINT, StatementCancelHandler);
	pqsignal(SIGUSR2, handle_give_way);
	BackgroundWorkerUnblockSignals();
	/* PostgreSQL 15 refuses a role without LOGIN here (FATAL): the launcher chose one that has it */
	BackgroundWorkerInitializeConnectionByOid(args.database, args.login, 0);
	if (OidIsValid(args.role))
	{
		/*
		 * The caller's current role, NOLOGIN, reached by SET ROLE from its session user (the login): set
		 * before any SQL or Python runs, as the role's default (source CLIENT, like a startup option), so
		 * RESET ROLE keeps it. SET ROLE NONE reaches the session user, as it does in the caller's session.
		 */
		StartTransactionCommand();
		(void) set_config_option("role", GetUserNameFromId(args.role, false), PGC_USERSET, PGC_S_CLIENT,
								 GUC_ACTION_SET, true, ERROR, false);
		CommitTransactionCommand();
	}
	if (GetUserId() != (OidIsValid(args.role) ? args.role : args.login))
		ereport(FATAL,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("madlib_dl: worker: not acting as the role it was started for")));
	memcpy(&this_worker, &args, sizeof(args));
	in_worker = true;

	while (more)
	{
		Oid			argtypes[1] = {TEXTOID};
		Datum		values[1];
		bool		isnull;
		Datum		result;

		CHECK_FOR_INTERRUPTS();
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (query == NULL)
		{
			Oid			schema = extension_schema(get_extension_oid("madlib_dl", false));
			char	   *name = OidIsValid(schema) ? get_namespace_name(schema) : NULL;
			MemoryContext old;

			if (name == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_SCHEMA),
						 errmsg("madlib_dl: worker: extension madlib_dl owns no schema")));
			old = MemoryContextSwitchTo(TopMemoryContext);
			query = psprintf("SELECT %s.internal_worker_serve($1)", quote_identifier(name));
			MemoryContextSwitchTo(old);
		}
		pgstat_report_activity(STATE_RUNNING, query);

		values[0] = CStringGetTextDatum(args.token);
		if (SPI_execute_with_args(query, 1, argtypes, values, NULL, false, 0) != SPI_OK_SELECT ||
			SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("madlib_dl: worker: %s did not return one row", query)));
		result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		more = !isnull && DatumGetBool(result);

		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_stat(false);
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	proc_exit(0);
}

/*
 * A large value handed over as a range of a memory file (madlib_dl/handoff.py): a model state that a
 * worker's reply brought as a memfd, written into an output table by the statement running meanwhile,
 * which reads it with internal_take_file(token). PL/Python would need the bytes as a Python object first
 * and copy them again into the datum; here they are read once, from the file into the datum. Armed by
 * madlib_dl's Python through ctypes (madlib_dl_hand_over_file: no SQL function reaches it), for one
 * statement, under a random token, and taken once. Only a memory file is read: never a relation's file
 * or any other file the backend has open.
 */
#define HANDOFF_TOKEN_BYTES 64
#define HANDOFF_READ_BYTES ((Size) 64 << 20)	/* a cancel is noticed between reads of this size */

static char handoff_token[HANDOFF_TOKEN_BYTES + 1];
static int	handoff_fd = -1;
static int64 handoff_start = 0;
static int64 handoff_size = 0;

PGDLLEXPORT int madlib_dl_hand_over_file(const char *token, int fd, int64 start, int64 size);
PGDLLEXPORT void madlib_dl_forget_file(void);

/* Arm (fd, start, size) under token for the next internal_take_file; -1 (and nothing armed) when refused. */
int
madlib_dl_hand_over_file(const char *token, int fd, int64 start, int64 size)
{
	madlib_dl_forget_file();
	if (token == NULL || token[0] == '\0' || strlen(token) > HANDOFF_TOKEN_BYTES || fd < 0 || start < 0 ||
		size < 0 || size > (int64) (MaxAllocSize - VARHDRSZ))
		return -1;
	strlcpy(handoff_token, token, sizeof(handoff_token));
	handoff_fd = fd;
	handoff_start = start;
	handoff_size = size;
	return 0;
}

void
madlib_dl_forget_file(void)
{
	handoff_token[0] = '\0';
	handoff_fd = -1;
	handoff_start = handoff_size = 0;
}

Datum
madlib_dl_take_file(PG_FUNCTION_ARGS)
{
	text	   *token = PG_GETARG_TEXT_PP(0);
	int			fd = handoff_fd;
	int64		start = handoff_start;
	int64		size = handoff_size;
	struct stat st;
	bytea	   *result;
	int64		done = 0;

	if (fd < 0 || VARSIZE_ANY_EXHDR(token) != strlen(handoff_token) ||
		memcmp(VARDATA_ANY(token), handoff_token, VARSIZE_ANY_EXHDR(token)) != 0)
		PG_RETURN_NULL();
	madlib_dl_forget_file();	/* taken once */
	/* F_GET_SEALS answers for memory files (memfd, shmem) only: not for a file on disk */
	if (fcntl(fd, F_GET_SEALS) < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < start + size)
		ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
						errmsg("madlib_dl: a value handed over is not in a memory file of its size")));
	result = (bytea *) palloc(size + VARHDRSZ);
	while (done < size)
	{
		ssize_t		count = pread(fd, VARDATA(result) + done, Min((Size) (size - done), HANDOFF_READ_BYTES),
								  start + done);

		if (count < 0 && errno == EINTR)
			continue;
		if (count < 0)
			ereport(ERROR, (errcode_for_file_access(),
							errmsg("madlib_dl: could not read a value handed over: %m")));
		if (count == 0)
			ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
							errmsg("madlib_dl: a value handed over ended after %lld of %lld bytes",
								   (long long) done, (long long) size)));
		done += count;
		CHECK_FOR_INTERRUPTS();
	}
	SET_VARSIZE(result, size + VARHDRSZ);
	PG_RETURN_BYTEA_P(result);
}

Datum
madlib_dl_client_connected(PG_FUNCTION_ARGS)
{
	/* Not a client backend (a background worker, say): there is no client to lose. */
	if (MyProcPort == NULL || MyBackendType != B_BACKEND || !WaitEventSetCanReportClosed())
		PG_RETURN_BOOL(true);
	PG_RETURN_BOOL(pq_check_connection());
}

/*
 * madlib_dl's own errors (raised by madlib_dl/db.py as "madlib_dl: <message>", with HINT and DETAIL
 * where useful) carry everything the user needs; PL/Python still adds the Python traceback and a
 * "PL/Python function" line as CONTEXT. Drop those two, keeping the contexts of any callers (a PL/pgSQL
 * function calling madlib_dl, say). Other errors, internal ones included, keep their traceback.
 */
#define OWN_ERROR_PREFIX "madlib_dl: "
#define TRACEBACK_HEAD "Traceback (most recent call last):"

static void
quiet_own_errors(ErrorData *edata)
{
	if (edata->elevel >= ERROR && edata->message != NULL && edata->context != NULL &&
		strncmp(edata->message, OWN_ERROR_PREFIX, strlen(OWN_ERROR_PREFIX)) == 0 &&
		strncmp(edata->context, TRACEBACK_HEAD, strlen(TRACEBACK_HEAD)) == 0)
	{
		/* The traceback's frames are the indented lines after its head; then PL/Python's own line. */
		const char *line = strchr(edata->context, '\n');

		while (line != NULL && strncmp(line + 1, "  ", 2) == 0)
			line = strchr(line + 1, '\n');
		if (line != NULL && strncmp(line + 1, "PL/Python function ", 19) == 0)
			line = strchr(line + 1, '\n');
		edata->context = (line != NULL) ? pstrdup(line + 1) : NULL;
	}
	if (previous_emit_log_hook)
		previous_emit_log_hook(edata);
}

/*
 * Settings: registered once per backend (madlib_dl/settings.py calls this for each at the backend's
 * first madlib_dl call). kind 'integer': an int4 range; 'bigint': int8, kept as text (GUCs have no
 * int8 type), checked here; 'enum': one of choices, the first being the default.
 */
static List *defined_settings = NIL;

static bool
parse_bigint(const char *text)
{
	char	   *end;

	errno = 0;
	(void) strtoll(text, &end, 10);
	while (*end == ' ' || *end == '\t')
		end++;
	return errno == 0 && end != text && *end == '\0';
}

/*
 * The DBA's caps: superuser-only settings (PGC_SUSET) that the settings they cap are clamped to when
 * madlib_dl reads them (madlib_dl/settings.py, where each is a Setting with superuser_only). Every role
 * calls madlib_dl_define_setting, possibly first and with arguments of its own, so the context, range and
 * default of a cap are decided here, from this list, never from the arguments: a call for a cap must
 * pass exactly these (settings.py's), and any other madlib_dl.max_* name is refused. A default of 0 with
 * memory_divisor > 0 is the machine's memory divided by memory_divisor MiB, as settings.py computes it.
 */
typedef struct Cap
{
	const char *name;
	int			minimum;
	int			maximum;
	int			fixed_default;
	int			memory_divisor;
} Cap;

static const Cap CAPS[] = {
	{"madlib_dl.max_worker_idle_timeout", 0, 86400, 600, 0},
	{"madlib_dl.max_memory_budget_mb", 1, PG_INT32_MAX, 0, 1},
	{"madlib_dl.max_recorder_idle_timeout", 1, 7 * 86400, 86400, 0},
	{"madlib_dl.max_workers_per_role", 1, 1024, DEFAULT_WORKERS_PER_ROLE, 0},
	{"madlib_dl.max_model_memory_mb", 1, PG_INT32_MAX, 0, 4},
};
#define CAP_PREFIX "madlib_dl.max_"

static int64
cap_default(const Cap *cap)
{
	int64		mib;

	if (cap->memory_divisor <= 0)
		return cap->fixed_default;
	mib = (int64) sysconf(_SC_PAGESIZE) * (int64) sysconf(_SC_PHYS_PAGES) / ((int64) cap->memory_divisor << 20);
	return Max(1, Min(mib, (int64) PG_INT32_MAX));
}

/* The cap of this name; NULL for a setting that is not one (an error for an unknown madlib_dl.max_*). */
static const Cap *
find_cap(const char *name, const char *kind, const char *boot, int64 minimum, int64 maximum)
{
	for (int i = 0; i < lengthof(CAPS); i++)
	{
		const Cap  *cap = &CAPS[i];
		char		expected[32];

		if (strcmp(cap->name, name) != 0)
			continue;
		snprintf(expected, sizeof(expected), INT64_FORMAT, cap_default(cap));
		if (strcmp(kind, "integer") != 0 || minimum != cap->minimum || maximum != cap->maximum ||
			strcmp(boot, expected) != 0)
			ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
							errmsg("madlib_dl: setting %s is a DBA cap: an integer from %d to %d, default %s", name,
								   cap->minimum, cap->maximum, expected)));
		return cap;
	}
	if (strncmp(name, CAP_PREFIX, strlen(CAP_PREFIX)) == 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("madlib_dl: setting %s: madlib_dl.max_* names are the DBA's caps, listed in "
							   "src/madlib_dl.c (CAPS)", name)));
	return NULL;
}

static bool
check_bigint(char **newval, void **extra, GucSource source)
{
	if (!parse_bigint(*newval))
	{
		GUC_check_errdetail("Expected an integer from %lld to %lld.", (long long) PG_INT64_MIN,
							(long long) PG_INT64_MAX);
		return false;
	}
	return true;
}

Datum
madlib_dl_define_setting(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *kind = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *boot = text_to_cstring(PG_GETARG_TEXT_PP(2));
	int64		minimum = PG_GETARG_INT64(3);
	int64		maximum = PG_GETARG_INT64(4);
	ArrayType  *choices = PG_GETARG_ARRAYTYPE_P(5);
	char	   *description = text_to_cstring(PG_GETARG_TEXT_PP(6));
	MemoryContext old;
	ListCell   *cell;
	const Cap  *cap;
	GucContext	context;

	/* Any role may call this (every session registers at its first call): only madlib_dl's own names,
	 * and only values the setting itself accepts, so that nothing here can fail after defining. */
	if (strncmp(name, "madlib_dl.", 10) != 0 || strlen(name) == 10 || strchr(name + 10, '.') != NULL)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("madlib_dl: setting name %s: expected madlib_dl.<name>", name)));
	foreach(cell, defined_settings)
	{
		if (strcmp((char *) lfirst(cell), name) == 0)
			PG_RETURN_BOOL(false);
	}
	cap = find_cap(name, kind, boot, minimum, maximum);
	context = (cap != NULL) ? PGC_SUSET : PGC_USERSET;
	if (strcmp(kind, "integer") == 0)
	{
		char	   *end;
		long long	value;

		errno = 0;
		value = strtoll(boot, &end, 10);
		if (errno != 0 || end == boot || *end != '\0' || minimum < PG_INT32_MIN || maximum > PG_INT32_MAX ||
			minimum > maximum || value < minimum || value > maximum)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							errmsg("madlib_dl: setting %s: default %s outside its range", name, boot)));
	}
	else if (strcmp(kind, "bigint") == 0)
	{
		if (!parse_bigint(boot))
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							errmsg("madlib_dl: setting %s: default %s is not an integer", name, boot)));
	}
	else if (strcmp(kind, "enum") == 0)
	{
		if (array_contains_nulls(choices) || ArrayGetNItems(ARR_NDIM(choices), ARR_DIMS(choices)) == 0)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							errmsg("madlib_dl: setting %s: choices must be a non-empty array without NULLs", name)));
	}
	else
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("madlib_dl: setting %s: unknown kind %s", name, kind)));
	old = MemoryContextSwitchTo(TopMemoryContext);
	name = pstrdup(name);
	description = pstrdup(description);
	if (strcmp(kind, "integer") == 0)
	{
		int		   *value = palloc0(sizeof(int));

		DefineCustomIntVariable(name, description, NULL, value, pg_strtoint32(boot), (int) minimum,
								(int) maximum, context, 0, NULL, NULL, NULL);
	}
	else if (strcmp(kind, "bigint") == 0)
	{
		char	  **value = palloc0(sizeof(char *));

		DefineCustomStringVariable(name, description, NULL, value, pstrdup(boot), context, 0,
								   check_bigint, NULL, NULL);
	}
	else if (strcmp(kind, "enum") == 0)
	{
		Datum	   *items;
		bool	   *nulls;
		int			count;
		struct config_enum_entry *options;
		int		   *value = palloc0(sizeof(int));

		deconstruct_array(choices, TEXTOID, -1, false, TYPALIGN_INT, &items, &nulls, &count);
		options = palloc0(sizeof(struct config_enum_entry) * (count + 1));
		for (int i = 0; i < count; i++)
		{
			options[i].name = TextDatumGetCString(items[i]);
			options[i].val = i;
		}
		DefineCustomEnumVariable(name, description, NULL, value, 0, options, context, 0, NULL, NULL,
								 NULL);
	}
	defined_settings = lappend(defined_settings, name);
	MemoryContextSwitchTo(old);
	PG_RETURN_BOOL(true);
}

Datum
madlib_dl_reserve_settings(PG_FUNCTION_ARGS)
{
	MarkGUCPrefixReserved("madlib_dl");
	PG_RETURN_VOID();
}

/*
 * The caller's search_path. Every madlib_dl function runs with SET search_path = pg_catalog, pg_temp, so
 * that no object a role creates in a schema on the caller's path can stand in for a built-in in
 * madlib_dl's own statements; the caller's path is still needed once, to resolve the table names the
 * caller typed as the caller would. A function's SET clause saves the value it replaces in the
 * setting's stack (state GUC_SAVE): the innermost such entry is the madlib_dl function calling this one
 * (this C function has no SET clause). Without one (called outside such a function) the current value.
 */
PG_FUNCTION_INFO_V1(madlib_dl_caller_search_path);

Datum
madlib_dl_caller_search_path(PG_FUNCTION_ARGS)
{
	struct config_generic **variables = get_guc_variables();
	int			count = GetNumConfigOptions();

	for (int i = 0; i < count; i++)
	{
		struct config_generic *variable = variables[i];

		if (strcmp(variable->name, "search_path") != 0 || variable->vartype != PGC_STRING)
			continue;
		for (GucStack *entry = variable->stack; entry != NULL; entry = entry->prev)
		{
			if (entry->state == GUC_SAVE)
			{
				const char *prior = entry->prior.val.stringval;

				PG_RETURN_TEXT_P(cstring_to_text(prior != NULL ? prior : ""));
			}
		}
		break;
	}
	PG_RETURN_TEXT_P(cstring_to_text(namespace_search_path != NULL ? namespace_search_path : ""));
}
