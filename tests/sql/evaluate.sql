-- madlib_keras_evaluate from psql on iris (3 segments): a fit_multiple model evaluated on the training
-- table gives the run's own final training metrics, and on the validation table its final validation
-- metrics; a single-model table (madlib_keras_fit's layout, made here by hand) gives the same numbers.
-- Values depend on the machine's float rounding, so only comparisons are shown; the workers are set so
-- that the NOTICEs do not depend on the machine's CPUs.
CREATE EXTENSION madlib_dl;
SET madlib_dl.training_workers = 3;
SET madlib_dl.worker_threads = 1;
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
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 3, "activation": "softmax"}}]}}$$);
SELECT madlib_dl.load_model_selection_table('arch', 'mst', ARRAY[1],
    ARRAY[$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$,
          $$loss='categorical_crossentropy', optimizer='SGD(lr=0.1)'$$],
    ARRAY['batch_size=16, epochs=1']);
SET madlib_dl.executor = 'in_process';
SET client_min_messages = warning;
SELECT madlib_dl.madlib_keras_fit_multiple_model('iris_packed', 'models', 'mst', 2, FALSE, 'iris_val_packed');
RESET client_min_messages;
RESET madlib_dl.executor;

-- help: the first line of the summary, the usage's signature
SELECT split_part(madlib_dl.madlib_keras_evaluate(), E'\n', 1) AS summary;
SELECT split_part(madlib_dl.madlib_keras_evaluate('usage'), E'\n', 1) AS usage;

-- 1. mst_key 1 on the training table (background workers): the run's final training loss and accuracy
SELECT madlib_dl.madlib_keras_evaluate('models', 'iris_packed', 'eval_train', FALSE, 1);
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relname = 'eval_train' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum;
SELECT abs(e.loss - i.training_loss_final) < 1e-5 AS same_loss,
       abs(e.metric - i.training_metrics_final) < 1e-5 AS same_metric, e.metrics_type, e.loss_type
FROM eval_train e, models_info i WHERE i.mst_key = 1;

-- 2. on the validation table, in this session: the run's final validation loss and accuracy
SET madlib_dl.executor = 'in_process';
SELECT madlib_dl.madlib_keras_evaluate('models', 'iris_val_packed', 'eval_val', FALSE, 1);
RESET madlib_dl.executor;
SELECT abs(e.loss - i.validation_loss_final) < 1e-5 AS same_loss,
       abs(e.metric - i.validation_metrics_final) < 1e-5 AS same_metric
FROM eval_val e, models_info i WHERE i.mst_key = 1;

-- 3. mst_key 2 has no metric: metric and metrics_type are NULL
SELECT madlib_dl.madlib_keras_evaluate('models', 'iris_val_packed', 'eval_sgd', FALSE, 2);
SELECT loss > 0 AS has_loss, metric IS NULL AS no_metric, metrics_type IS NULL AS no_metrics_type, loss_type
FROM eval_sgd;

-- 4. a single-model table (madlib_keras_fit's layout) holding mst_key 1: the 3-argument call
CREATE TABLE single AS SELECT model_weights, model_arch FROM models WHERE mst_key = 1;
CREATE TABLE single_summary AS
SELECT s.source_table, s.dependent_varname, s.independent_varname, s.class_text_class_values, s.normalizing_const,
       s.num_classes, i.compile_params, i.metrics_type, i.loss_type
FROM models_summary s, models_info i WHERE i.mst_key = 1;
SELECT madlib_dl.madlib_keras_evaluate('single', 'iris_val_packed', 'eval_single');
SELECT abs(s.loss - v.loss) < 1e-6 AS same_loss, abs(s.metric - v.metric) < 1e-6 AS same_metric
FROM eval_single s, eval_val v;

-- 5. errors: nothing is created
SELECT madlib_dl.madlib_keras_evaluate('models', 'iris_val_packed', 'eval_err', FALSE);
SELECT madlib_dl.madlib_keras_evaluate('models', 'iris_val_packed', 'eval_err', FALSE, 7);
SELECT madlib_dl.madlib_keras_evaluate('single', 'iris_val_packed', 'eval_err', FALSE, 1);
SELECT madlib_dl.madlib_keras_evaluate('models', 'iris_val', 'eval_err', FALSE, 1);
SELECT madlib_dl.madlib_keras_evaluate('models', 'iris_val_packed', 'eval_val', FALSE, 1);
SELECT madlib_dl.madlib_keras_evaluate('models', 'iris_val_packed', 'nowhere.eval_err', FALSE, 1);
SELECT to_regclass('eval_err') IS NULL AS nothing_created;
