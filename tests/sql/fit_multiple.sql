-- madlib_keras_fit_multiple_model from psql: MADlib's scenarios on iris (3 segments). Losses and metrics
-- depend on which worker finishes first, so only structure is shown: tables, columns, counts, array
-- lengths, NULLs, the summary, and where each hop ran. NOTICEs carry timings: warnings only around fits.
CREATE EXTENSION madlib_dl;
CREATE TABLE iris (id INTEGER, attributes DOUBLE PRECISION[], class_text VARCHAR);
\copy iris FROM 'data/iris.csv' WITH (FORMAT csv)
CREATE TABLE iris_train AS SELECT * FROM iris WHERE id % 5 <> 0;
CREATE TABLE iris_val AS SELECT * FROM iris WHERE id % 5 = 0;
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'iris_packed', 'class_text', 'attributes',
                                          NULL, 1.0, NULL, '3');
SELECT madlib_dl.validation_preprocessor_dl('iris_val', 'iris_val_packed', 'class_text', 'attributes',
                                            'iris_packed');
SELECT madlib_dl.load_keras_model('arch', $${"module": "keras", "class_name": "Sequential", "config": {"name": "small", "layers": [
  {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4]}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 10, "activation": "relu"}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 3, "activation": "softmax"}}]}}$$,
  NULL, 'small', '4-10-3');

-- help: the first line of the summary, the usage's signature
SELECT split_part(madlib_dl.madlib_keras_fit_multiple_model(), E'\n', 1) AS summary;
SELECT split_part(madlib_dl.madlib_keras_fit_multiple_model('usage'), E'\n', 1) AS usage;
SELECT position('use_caching               BOOLEAN DEFAULT FALSE' IN madlib_dl.madlib_keras_fit_multiple_model('usage')) > 0
       AS usage_has_use_caching;

-- 1. four configurations on three segments, the 5-argument call: no validation, no caching, metrics
--    after the last iteration only
SELECT madlib_dl.load_model_selection_table('arch', 'mst4', ARRAY[1],
    ARRAY[$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$,
          $$loss='categorical_crossentropy', optimizer='SGD(lr=0.1)', metrics=['accuracy']$$],
    ARRAY['batch_size=16, epochs=1', 'batch_size=32, epochs=1']);
-- one worker per segment whatever the machine's CPUs (a run chooses as many as it has CPUs, at most 3 here)
SET madlib_dl.training_workers = 3;
SET client_min_messages = warning;
SELECT madlib_dl.madlib_keras_fit_multiple_model('iris_packed', 'out4', 'mst4', 2, FALSE);
RESET client_min_messages;
RESET madlib_dl.training_workers;
SELECT (SELECT count(*) FROM out4) AS models, (SELECT count(*) FROM out4_info) AS info_rows,
       (SELECT count(*) FROM out4_summary) AS summary_rows;
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relname IN ('out4', 'out4_info', 'out4_summary') AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum;
SELECT relname, relpersistence FROM pg_class WHERE relname IN ('out4', 'out4_info', 'out4_summary') ORDER BY 1;
SELECT mst_key, length(model_weights) AS weight_bytes, model_arch::text = (SELECT model_arch::text FROM arch) AS same_arch,
       __dist_key__ BETWEEN 0 AND 2 AS on_a_segment, optimizer_state IS NOT NULL AS has_optimizer_state
FROM out4 ORDER BY mst_key;
SELECT mst_key, model_id, compile_params, fit_params, model_type, model_size, metrics_type, loss_type
FROM out4_info ORDER BY mst_key;
SELECT mst_key, array_length(training_loss, 1) AS losses, array_length(training_metrics, 1) AS metrics,
       array_length(metrics_elapsed_time, 1) AS times, metrics_iters,
       training_loss_final = training_loss[1] AND training_metrics_final = training_metrics[1] AS finals_are_last,
       validation_loss IS NULL AND validation_metrics IS NULL AND validation_loss_final IS NULL
           AND validation_metrics_final IS NULL AND validation_metrics_elapsed_time IS NULL AS no_validation
FROM out4_info ORDER BY mst_key;
SELECT source_table, validation_table, model, model_info, dependent_varname, independent_varname, model_arch_table,
       model_selection_table, object_table, num_iterations, metrics_compute_frequency, warm_start, name, description,
       start_training_time <= end_training_time AS times_ordered, madlib_version, num_classes, class_text_class_values,
       dependent_vartype, normalizing_const, metrics_iters
FROM out4_summary;
-- Model Hopper Parallelism: every model visits every segment once per iteration, on background workers
SELECT kind, count(*) AS hops, count(DISTINCT (mst_key, segment, iteration)) AS distinct_visits,
       count(DISTINCT worker_pid) AS workers, bool_and(worker_pid <> pg_backend_pid()) AS not_this_session
FROM madlib_dl.last_fit_hops() GROUP BY kind ORDER BY kind;

-- 2. three configurations on three segments, with validation, metrics every 2nd of 3 iterations, caching
SELECT madlib_dl.load_model_selection_table('arch', 'mst3', ARRAY[1],
    ARRAY[$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$,
          $$loss='categorical_crossentropy', optimizer='Adam(lr=0.001)', metrics=['accuracy']$$,
          $$loss='categorical_crossentropy', optimizer='SGD(lr=0.1, momentum=0.9)', metrics=['accuracy']$$],
    ARRAY['batch_size=16, epochs=1']);
SET client_min_messages = warning;
SELECT madlib_dl.madlib_keras_fit_multiple_model('iris_packed', 'out3', 'mst3', 3, FALSE, 'iris_val_packed', 2,
                                                 FALSE, NULL, NULL, use_caching => TRUE);
RESET client_min_messages;
SELECT mst_key, metrics_iters, array_length(training_loss, 1) AS train_losses,
       array_length(training_metrics, 1) AS train_metrics, array_length(validation_loss, 1) AS val_losses,
       array_length(validation_metrics, 1) AS val_metrics, array_length(metrics_elapsed_time, 1) AS train_times,
       array_length(validation_metrics_elapsed_time, 1) AS val_times,
       metrics_elapsed_time[1] < metrics_elapsed_time[2] AS train_times_increase,
       validation_metrics_elapsed_time[1] < validation_metrics_elapsed_time[2] AS val_times_increase,
       validation_loss_final = validation_loss[2] AND validation_metrics_final = validation_metrics[2] AS finals_are_last
FROM out3_info ORDER BY mst_key;
SELECT validation_table, num_iterations, metrics_compute_frequency, metrics_iters FROM out3_summary;
SELECT kind, count(*) AS hops, count(DISTINCT (mst_key, segment, iteration)) AS distinct_visits,
       count(DISTINCT iteration) AS iterations, sum(images) AS images
FROM madlib_dl.last_fit_hops() GROUP BY kind ORDER BY kind;

-- 3. one configuration, three segments, name and description, metrics every iteration, in this session
SELECT madlib_dl.load_model_selection_table('arch', 'mst1', ARRAY[1],
    ARRAY[$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$],
    ARRAY['batch_size=8, epochs=1']);
SET madlib_dl.executor = 'in_process';
SET client_min_messages = warning;
SELECT madlib_dl.madlib_keras_fit_multiple_model('iris_packed', 'out1', 'mst1', 3, FALSE, 'iris_val_packed', 1,
                                                 FALSE, 'one model', 'frequency 1, in process');
RESET client_min_messages;
RESET madlib_dl.executor;
SELECT mst_key, metrics_iters, array_length(training_loss, 1) AS train_losses,
       array_length(training_metrics, 1) AS train_metrics, array_length(validation_loss, 1) AS val_losses,
       array_length(validation_metrics, 1) AS val_metrics, array_length(metrics_elapsed_time, 1) AS train_times,
       array_length(validation_metrics_elapsed_time, 1) AS val_times
FROM out1_info;
SELECT name, description, num_iterations, metrics_compute_frequency, metrics_iters FROM out1_summary;
SELECT kind, count(*) AS hops, bool_and(worker_pid = pg_backend_pid()) AS this_session
FROM madlib_dl.last_fit_hops() GROUP BY kind ORDER BY kind;

-- 4. warm start from out4 after deleting mst_key 2 and adding a configuration (mst_key 5): the output
--    holds exactly the configurations of the mst table now
DELETE FROM mst4 WHERE mst_key = 2;
SELECT madlib_dl.load_model_selection_table('arch', 'mst4', ARRAY[1],
    ARRAY[$$loss='categorical_crossentropy', optimizer='RMSprop(lr=0.01)', metrics=['accuracy']$$],
    ARRAY['batch_size=16, epochs=1']);
SELECT array_agg(mst_key ORDER BY mst_key) AS mst_keys FROM mst4;
SET client_min_messages = warning;
SELECT madlib_dl.madlib_keras_fit_multiple_model('iris_packed', 'out4', 'mst4', 1, FALSE, NULL, NULL, TRUE);
RESET client_min_messages;
SELECT (SELECT array_agg(mst_key ORDER BY mst_key) FROM out4) AS models,
       (SELECT array_agg(mst_key ORDER BY mst_key) FROM out4_info) AS info,
       (SELECT array_agg(mst_key ORDER BY mst_key) FROM mst4) AS mst;
SELECT mst_key, compile_params, array_length(training_loss, 1) AS losses, metrics_iters FROM out4_info ORDER BY mst_key;
SELECT warm_start, num_iterations, metrics_iters FROM out4_summary;

-- 5. schema-qualified source, model selection and output tables
CREATE SCHEMA s1;
CREATE TABLE s1.iris_train AS SELECT * FROM iris_train;
SELECT madlib_dl.training_preprocessor_dl('s1.iris_train', 's1.iris_packed', 'class_text', 'attributes',
                                          NULL, 1.0, NULL, '3');
SELECT madlib_dl.load_model_selection_table('arch', 's1.mst', ARRAY[1],
    ARRAY[$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$],
    ARRAY['batch_size=16, epochs=1']);
SET client_min_messages = warning;
SELECT madlib_dl.madlib_keras_fit_multiple_model('s1.iris_packed', 's1.out', 's1.mst', 1, FALSE);
RESET client_min_messages;
SELECT table_schema, table_name FROM information_schema.tables
WHERE table_name LIKE 'out%' AND table_schema = 's1' ORDER BY 2;
SELECT to_regclass('public.out') IS NULL AND to_regclass('public.out_info') IS NULL AS nothing_in_public;
SELECT source_table, model, model_info, model_arch_table, model_selection_table, num_classes FROM s1.out_summary;
SELECT mst_key, array_length(training_loss, 1) AS losses FROM s1.out_info;

-- 6. errors: no iterations, an output that exists, a warm start without output
SELECT madlib_dl.madlib_keras_fit_multiple_model('iris_packed', 'out_none', 'mst1', 0, FALSE);
SELECT madlib_dl.madlib_keras_fit_multiple_model('iris_packed', 'out1', 'mst1', 1, FALSE);
SELECT madlib_dl.madlib_keras_fit_multiple_model('iris_packed', 'out_none', 'mst1', 1, FALSE, NULL, NULL, TRUE);
SELECT to_regclass('out_none') IS NULL AND to_regclass('out_none_info') IS NULL
       AND to_regclass('out_none_summary') IS NULL AS nothing_created;
