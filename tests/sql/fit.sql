-- madlib_keras_fit from psql: one model on iris (3 segments), MADlib's call forms. Losses depend on
-- float rounding, so only structure is shown: tables, columns, counts, array lengths, NULLs, the
-- summary, the hops. NOTICEs carry timings: warnings only around fits.
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
SELECT split_part(madlib_dl.madlib_keras_fit(), E'\n', 1) AS summary;
SELECT split_part(madlib_dl.madlib_keras_fit('usage'), E'\n', 1) AS usage;

-- 1. the 7-argument call (MADlib's defaults for the rest), on background workers
SET client_min_messages = warning;
SELECT madlib_dl.madlib_keras_fit('iris_packed', 'iris_model', 'arch', 1,
    $$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$,
    'batch_size=16, epochs=1', 3);
RESET client_min_messages;
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relname IN ('iris_model', 'iris_model_summary') AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum;
SELECT count(*) AS models, bool_and(length(model_weights) = 83 * 4) AS weights_83,
       bool_and(model_arch::text = (SELECT model_arch::text FROM arch)) AS same_arch,
       bool_and(optimizer_state IS NOT NULL) AS has_optimizer_state
FROM iris_model;
SELECT source_table, model, dependent_varname, independent_varname, model_arch_table, model_id, compile_params,
       fit_params, num_iterations, validation_table, object_table, metrics_compute_frequency, name, description,
       model_type, model_size, start_training_time <= end_training_time AS times_ordered, madlib_version,
       num_classes, dependent_vartype, normalizing_const, metrics_type, loss_type, metrics_iters,
       class_text_class_values, total_iterations
FROM iris_model_summary;
SELECT array_length(training_loss, 1) AS losses, array_length(training_metrics, 1) AS metrics,
       array_length(metrics_elapsed_time, 1) AS times,
       training_loss_final = training_loss[1] AND training_metrics_final = training_metrics[1] AS finals_are_last,
       training_metrics_final BETWEEN 0 AND 1 AS accuracy_in_range,
       validation_loss IS NULL AND validation_metrics IS NULL AND validation_loss_final IS NULL
           AND validation_metrics_final IS NULL AND validation_metrics_elapsed_time IS NULL AS no_validation
FROM iris_model_summary;
-- one model, one hop per segment per iteration, one at a time
SELECT kind, count(*) AS hops, count(DISTINCT (segment, iteration)) AS distinct_visits,
       count(DISTINCT mst_key) AS models, sum(images) AS images
FROM madlib_dl.last_fit_hops() GROUP BY kind ORDER BY kind;
SELECT count(*) AS overlapping_hops FROM madlib_dl.last_fit_hops() a JOIN madlib_dl.last_fit_hops() b
    ON a.started < b.started AND b.started < a.ended WHERE a.kind = 'train' AND b.kind = 'train';

-- 2. named arguments: validation, metrics every 2nd of 3 iterations, in this session; the segments'
--    order is madlib_dl.fit_seed's
SET madlib_dl.executor = 'in_process';
SET client_min_messages = warning;
SELECT madlib_dl.madlib_keras_fit('iris_packed', 'iris_val_model', 'arch', 1,
    $$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$,
    'batch_size=16, epochs=1', 3, validation_table => 'iris_val_packed', metrics_compute_frequency => 2,
    name => 'iris', description => 'with validation');
RESET client_min_messages;
SELECT name, description, validation_table, metrics_compute_frequency, metrics_iters,
       array_length(training_loss, 1) AS train_losses, array_length(validation_loss, 1) AS val_losses,
       array_length(validation_metrics, 1) AS val_metrics, array_length(metrics_elapsed_time, 1) AS train_times,
       array_length(validation_metrics_elapsed_time, 1) AS val_times,
       validation_loss_final = validation_loss[2] AND validation_metrics_final = validation_metrics[2] AS finals_are_last
FROM iris_val_model_summary;
SELECT iteration, segment, buffers_read, images, worker_pid = pg_backend_pid() AS this_session
FROM madlib_dl.last_fit_hops() WHERE kind = 'train' ORDER BY started;

-- 3. warm start: one more iteration from the stored model; the summary is replaced
SET client_min_messages = warning;
SELECT madlib_dl.madlib_keras_fit('iris_packed', 'iris_val_model', 'arch', 1,
    $$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$,
    'batch_size=16, epochs=1', 1, warm_start => TRUE);
RESET client_min_messages;
SELECT name, num_iterations, total_iterations, metrics_iters, validation_table FROM iris_val_model_summary;
SELECT iteration, segment FROM madlib_dl.last_fit_hops() WHERE kind = 'train' ORDER BY started;
SELECT count(*) AS models FROM iris_val_model;
RESET madlib_dl.executor;

-- 4. errors: one each, nothing created
SELECT madlib_dl.madlib_keras_fit('iris_packed', 'nope', 'arch', 1, NULL, 'batch_size=16', 1);
SELECT madlib_dl.madlib_keras_fit('iris_packed', 'nope', 'arch', 7, $$loss='mse', optimizer='SGD'$$, '', 1);
SELECT madlib_dl.madlib_keras_fit('iris_packed', 'nope', 'arch', 1, $$loss='mse', optimizer='SGD'$$, '', 0);
SELECT madlib_dl.madlib_keras_fit('iris_packed', 'iris_model', 'arch', 1, $$loss='mse', optimizer='SGD'$$, '', 1);
SELECT madlib_dl.madlib_keras_fit('iris_packed', 'nope', 'arch', 1, $$loss='mse', optimizer='SGD'$$, '', 1,
                                  warm_start => TRUE);
SELECT madlib_dl.madlib_keras_fit('iris_packed', 'nope', 'arch', 1, $$loss='mse', optimizer='SGD'$$, '', 1,
                                  object_table => 'custom_functions');
SELECT to_regclass('nope') IS NULL AND to_regclass('nope_summary') IS NULL AS nothing_created;
