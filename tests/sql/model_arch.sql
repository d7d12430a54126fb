-- load_keras_model / delete_keras_model from psql: MADlib's model architecture table.
CREATE EXTENSION madlib_dl;

-- Two architectures as Keras 3's model.to_json() writes them, with the keys left out that only repeat
-- Keras' defaults (Keras fills them back in): an iris MLP 4-10-3 and a CNN on 8x8x1 digits, 10 classes.
CREATE TABLE keras_json (label TEXT PRIMARY KEY, arch JSON);
INSERT INTO keras_json VALUES ('iris_mlp', $${"module": "keras", "class_name": "Sequential", "config": {"name": "iris_mlp", "layers": [
  {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4]}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 10, "activation": "relu"}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 3, "activation": "softmax"}}]}}$$);
INSERT INTO keras_json VALUES ('digits_cnn', $${"module": "keras", "class_name": "Sequential", "config": {"name": "digits_cnn", "layers": [
  {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 8, 8, 1]}},
  {"module": "keras.layers", "class_name": "Conv2D", "config": {"filters": 4, "kernel_size": [3, 3], "activation": "relu"}},
  {"module": "keras.layers", "class_name": "Flatten", "config": {}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 10, "activation": "softmax"}}]}}$$);
SELECT arch AS iris_mlp FROM keras_json WHERE label = 'iris_mlp' \gset
SELECT arch AS digits_cnn FROM keras_json WHERE label = 'digits_cnn' \gset

-- help: summary, usage, unknown topic
SELECT madlib_dl.load_keras_model() LIKE 'load_keras_model: add a Keras model architecture%' AS summary_ok;
SELECT position('model_weights BYTEA' IN madlib_dl.load_keras_model('usage')) > 0 AS usage_ok;
SELECT madlib_dl.load_keras_model('tables');
SELECT madlib_dl.delete_keras_model('?') LIKE '%model_id INTEGER%' AS delete_usage_ok;

-- the table is created on first use; every overload, as a user types it (an untyped literal is JSON)
SELECT madlib_dl.load_keras_model('model_arch_library', :'iris_mlp');
SELECT madlib_dl.load_keras_model('model_arch_library', :'iris_mlp'::json, NULL, 'iris');
SELECT madlib_dl.load_keras_model('model_arch_library', arch, NULL, 'digits', 'CNN 8x8x1 -> 10') FROM keras_json WHERE label = 'digits_cnn';
-- initial weights: 83 float32 values (4*10 + 10 + 10*3 + 3), here all 1.0 (0000803f little-endian)
SELECT madlib_dl.load_keras_model('model_arch_library', :'iris_mlp', decode(repeat('0000803f', 83), 'hex'));
\d model_arch_library
SELECT model_id, name, description, length(model_weights) AS weight_bytes, model_arch->'config'->>'name' AS arch,
       __internal_madlib_id__ IS NOT NULL AS has_internal_id
FROM model_arch_library ORDER BY model_id;

-- quoted and schema-qualified table names
CREATE SCHEMA s1;
SELECT madlib_dl.load_keras_model('"My Arch"', :'digits_cnn');
SELECT madlib_dl.load_keras_model('s1.arch', :'digits_cnn');
SELECT count(*) AS my_arch FROM "My Arch";
SELECT count(*) AS s1_arch FROM s1.arch;

-- bad input: one clear error each, nothing created or changed
SELECT madlib_dl.load_keras_model(NULL, :'iris_mlp');
SELECT madlib_dl.load_keras_model('', :'iris_mlp');
SELECT madlib_dl.load_keras_model('x; DROP TABLE keras_json', :'iris_mlp');
SELECT madlib_dl.load_keras_model('nope.arch', :'iris_mlp');
SELECT madlib_dl.load_keras_model('keras_json', :'iris_mlp');
SELECT madlib_dl.load_keras_model('new_arch', NULL);
SELECT madlib_dl.load_keras_model('new_arch', '{not json');
SELECT madlib_dl.load_keras_model('new_arch', '{"class_name": "Dense", "config": {"units": 3}}');
SELECT madlib_dl.load_keras_model('new_arch', '{"module": "keras", "class_name": "Sequential", "config": {"name": "no_input", "layers": [
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 3}}]}}');
SELECT madlib_dl.load_keras_model('new_arch', '{"module": "keras", "class_name": "Sequential", "config": {"name": "no_dense", "layers": [
  {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4, 2]}},
  {"module": "keras.layers", "class_name": "Flatten", "config": {}}]}}');
-- a Lambda layer carries Python code (here base64 of print('hi')): refused, never decoded
SELECT madlib_dl.load_keras_model('new_arch', '{"module": "keras", "class_name": "Sequential", "config": {"name": "code", "layers": [
  {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4]}},
  {"module": "keras.layers", "class_name": "Lambda", "config": {"function": {"class_name": "__lambda__",
   "config": {"code": "cHJpbnQoJ2hpJyk=", "defaults": null, "closure": null}}}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 3}}]}}');
SELECT madlib_dl.load_keras_model('new_arch', :'iris_mlp', decode(repeat('0000803f', 82), 'hex'));
SELECT madlib_dl.load_keras_model('model_arch_library', :'digits_cnn', decode(repeat('0000803f', 83), 'hex'));
SELECT to_regclass('new_arch') IS NULL AS not_created, (SELECT count(*) FROM model_arch_library) AS models_unchanged;

-- delete: one model, then unknown ids and tables; the last model takes its table along
SELECT madlib_dl.delete_keras_model('model_arch_library', 2);
SELECT model_id, name FROM model_arch_library ORDER BY model_id;
SELECT madlib_dl.delete_keras_model('model_arch_library', 2);
SELECT madlib_dl.delete_keras_model('model_arch_library', NULL);
SELECT madlib_dl.delete_keras_model('no_such_table', 1);
SELECT madlib_dl.delete_keras_model('keras_json', 1);
SELECT madlib_dl.delete_keras_model('s1.arch', 1);
SELECT to_regclass('s1.arch') IS NULL AS dropped;
SELECT madlib_dl.delete_keras_model('"My Arch"', 1);
SELECT madlib_dl.delete_keras_model('model_arch_library', 1);
SELECT madlib_dl.delete_keras_model('model_arch_library', 3);
SELECT madlib_dl.delete_keras_model('model_arch_library', 4);
SELECT to_regclass('model_arch_library') IS NULL AS dropped, (SELECT count(*) FROM keras_json) AS keras_json_kept;
