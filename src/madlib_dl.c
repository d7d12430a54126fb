/*
 * madlib_dl.c: the extension's only C code. It lets the Python driver start PostgreSQL dynamic
 * background workers and notice a dead client; everything else stays in Python.
 *
 *   madlib_dl_launch_worker(token text) -> int4   start one worker, return its pid (NULL: no free slot)
 *   madlib_dl_worker_main(Datum)                  the worker: calls <schema>.internal_worker_serve(token)
 *                                                 in a loop, one transaction per call, until it returns
 *                                                 false or NULL
 *   madlib_dl_client_connected() -> bool          false once the client of this backend has gone away
 *   madlib_dl_define_setting(...)                 register one madlib_dl.* setting as a real custom
 *                                                 setting (SHOW works, SET checks the value); its name,
 *                                                 range and default come from madlib_dl/settings.py
 *   madlib_dl_reserve_settings()                  after the last one: madlib_dl.<typo> is an error
 *   an emit_log_hook                              drops PL/Python's traceback from madlib_dl's own errors
 *                                                 ("madlib_dl: ..."): PL/Python has no way to omit it
 *
 * A worker connects to the caller's database as the caller's session user (the role that logged in),
 * so it has exactly that role's privileges: no login, no password, no pg_hba entry.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
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
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/array.h"
#include "utils/elog.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(madlib_dl_launch_worker);
PG_FUNCTION_INFO_V1(madlib_dl_client_connected);
PG_FUNCTION_INFO_V1(madlib_dl_define_setting);
PG_FUNCTION_INFO_V1(madlib_dl_reserve_settings);
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

/* What a worker gets from its launcher, in bgw_extra (BGW_EXTRALEN = 128 bytes). */
typedef struct WorkerArgs
{
	Oid			database;		/* the caller's database */
	Oid			login;			/* the caller's session user: the role that logged in */
	char		token[BGW_EXTRALEN - 2 * sizeof(Oid)];	/* NUL-terminated */
} WorkerArgs;

StaticAssertDecl(sizeof(WorkerArgs) <= BGW_EXTRALEN, "WorkerArgs must fit in bgw_extra");

Datum
madlib_dl_launch_worker(PG_FUNCTION_ARGS)
{
	char	   *token = text_to_cstring(PG_GETARG_TEXT_PP(0));
	WorkerArgs	args;
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	BgwHandleStatus status;
	pid_t		pid;

	memset(&args, 0, sizeof(args));
	if (strlen(token) >= sizeof(args.token))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("madlib_dl: token: expected at most %d bytes, got %d",
						(int) sizeof(args.token) - 1, (int) strlen(token))));
	args.database = MyDatabaseId;
	args.login = GetSessionUserId();
	strlcpy(args.token, token, sizeof(args.token));

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "madlib_dl");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "madlib_dl_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "madlib_dl worker for PID %d", MyProcPid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "madlib_dl worker");
	worker.bgw_main_arg = (Datum) 0;
	memcpy(worker.bgw_extra, &args, sizeof(args));
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		PG_RETURN_NULL();		/* every worker slot is taken (max_worker_processes) */

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
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(args.database, args.login, 0);

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
								(int) maximum, PGC_USERSET, 0, NULL, NULL, NULL);
	}
	else if (strcmp(kind, "bigint") == 0)
	{
		char	  **value = palloc0(sizeof(char *));

		DefineCustomStringVariable(name, description, NULL, value, pstrdup(boot), PGC_USERSET, 0,
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
		DefineCustomEnumVariable(name, description, NULL, value, 0, options, PGC_USERSET, 0, NULL, NULL,
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
