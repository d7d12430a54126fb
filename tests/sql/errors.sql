-- What a user sees in psql with its default settings (VERBOSITY default, SHOW_CONTEXT errors) after a
-- mistake in each function family: one ERROR line, a HINT where there is a remedy to name, and no
-- CONTEXT traceback.
\set VERBOSITY default
CREATE EXTENSION madlib_dl;
CREATE TABLE iris (id INTEGER, attributes DOUBLE PRECISION[], class_text VARCHAR);
\copy iris FROM 'data/iris.csv' WITH (FORMAT csv)
CREATE TABLE iris_scalars AS
SELECT id, attributes[1] AS sl, attributes[2] AS sw, attributes[3] AS pl, attributes[4] AS pw, class_text FROM iris;
SET client_min_messages = warning;
SELECT madlib_dl.training_preprocessor_dl('iris', 'iris_packed', 'class_text', 'attributes', NULL, 1.0, NULL, '2');
SELECT madlib_dl.load_keras_model('arch', $${"module": "keras", "class_name": "Sequential", "config": {"name": "mlp", "layers": [
  {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4]}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 3, "activation": "softmax"}}]}}$$);
SELECT madlib_dl.load_model_selection_table('arch', 'mst', ARRAY[1],
    ARRAY[$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$],
    ARRAY['batch_size=16, epochs=1']);
RESET client_min_messages;

-- packing: the usual table has one column per feature
SELECT madlib_dl.training_preprocessor_dl('iris_scalars', 'iris_packed2', 'class_text', 'sl, sw, pl, pw');
-- packing: a table that is not there
SELECT madlib_dl.validation_preprocessor_dl('iris_tset', 'iris_test_packed', 'class_text', 'attributes', 'iris_packed');
-- architectures: JSON, but not a Keras model
SELECT madlib_dl.load_keras_model('arch', '{"layers": []}');
-- model selection tables: a comma left out
SELECT madlib_dl.load_model_selection_table('arch', 'mst2', ARRAY[1],
    ARRAY[$$loss='categorical_crossentropy' optimizer='Adam(lr=0.01)', metrics=['accuracy']$$],
    ARRAY['batch_size=16, epochs=1']);
-- model selection: an output table that exists
SELECT madlib_dl.madlib_keras_fit_multiple_model('iris_packed', 'iris', 'mst', 1, FALSE);
-- training one model: no iterations
SELECT madlib_dl.madlib_keras_fit('iris_packed', 'model', 'arch', 1,
    $$loss='categorical_crossentropy', optimizer='Adam', metrics=['accuracy']$$, 'batch_size=16', 0);
-- evaluating a model that was never trained
SELECT madlib_dl.madlib_keras_evaluate('no_model', 'iris_packed', 'evaluation');
-- predicting with an architecture that has no weights
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'iris', 'id', 'attributes', 'predictions', 'classes');
-- a setting out of range
SELECT madlib_dl.version() IS NOT NULL AS loaded;
SET madlib_dl.num_segments = 0;
-- nothing was created by the failed calls
SELECT string_agg(relname, ', ' ORDER BY relname) AS tables FROM pg_class
WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace;
