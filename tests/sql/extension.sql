-- The extension's SQL surface from psql: create, call, bad input, drop.
CREATE EXTENSION madlib_dl;

-- version() names all four components
SELECT madlib_dl.version() ~ '^madlib_dl \d+\.\d+\.\d+, Python 3\.11\.\d+, TensorFlow \d+\.\d+\.\d+, Keras 3\.\d+\.\d+$' AS version_ok;

-- gpu_configuration: this host has no GPU, so the tables are empty (the NOTICE names the host: hidden)
SET client_min_messages = warning;
SELECT madlib_dl.gpu_configuration('gpus');
SELECT madlib_dl.gpu_configuration('gpus_smi', 'nvidia');
RESET client_min_messages;
\d gpus
SELECT count(*) AS gpus FROM gpus;
SELECT count(*) AS gpus FROM gpus_smi;
SELECT madlib_dl.gpu_configuration() LIKE 'gpu_configuration: list the GPUs%' AS help_ok;

-- bad input: one clear error each, nothing created
SELECT madlib_dl.gpu_configuration('gpus');
SELECT madlib_dl.gpu_configuration('gpus2', 'opencl');
SELECT madlib_dl.gpu_configuration(NULL);
SELECT madlib_dl.gpu_configuration('gpus; DROP TABLE gpus');
SELECT madlib_dl.gpu_configuration('nope.gpus');
SELECT to_regclass('gpus2') IS NULL AS not_created;

-- DROP EXTENSION takes its schema along (the user's tables stay)
DROP EXTENSION madlib_dl;
SELECT count(*) AS schemas FROM pg_namespace WHERE nspname = 'madlib_dl';
SELECT count(*) AS functions FROM pg_proc WHERE proname = 'gpu_configuration';
SELECT count(*) AS user_tables_kept FROM gpus;
