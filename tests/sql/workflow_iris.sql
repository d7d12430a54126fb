-- From a plain table of iris examples to a model-selection run's inputs, every data API function in turn.
CREATE EXTENSION madlib_dl;
CREATE TABLE iris (id INTEGER, attributes DOUBLE PRECISION[], class_text VARCHAR);
\copy iris FROM 'data/iris.csv' WITH (FORMAT csv)
CREATE TABLE iris_train AS SELECT * FROM iris WHERE id % 5 <> 0;
CREATE TABLE iris_test AS SELECT * FROM iris WHERE id % 5 = 0;

-- 1. pack: 2 segments, the same ones for the validation table
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'iris_packed', 'class_text', 'attributes',
                                          NULL, 1.0, NULL, '2');
SELECT madlib_dl.validation_preprocessor_dl('iris_test', 'iris_test_packed', 'class_text', 'attributes',
                                            'iris_packed');
SELECT 'train' AS t, __dist_key__, count(*) AS buffers, sum(attributes_shape[1]) AS examples
FROM iris_packed GROUP BY __dist_key__
UNION ALL
SELECT 'test', __dist_key__, count(*), sum(attributes_shape[1]) FROM iris_test_packed GROUP BY __dist_key__
ORDER BY 1 DESC, 2;

-- 2. two architectures (Keras 3 model.to_json()): 4-10-3 and 4-16-8-3
SELECT madlib_dl.load_keras_model('model_arch_library', $${"module": "keras", "class_name": "Sequential", "config": {"name": "small", "layers": [
  {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4]}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 10, "activation": "relu"}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 3, "activation": "softmax"}}]}}$$,
  NULL, 'small', '4-10-3');
SELECT madlib_dl.load_keras_model('model_arch_library', $${"module": "keras", "class_name": "Sequential", "config": {"name": "deeper", "layers": [
  {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4]}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 16, "activation": "relu"}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 8, "activation": "relu"}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 3, "activation": "softmax"}}]}}$$,
  NULL, 'deeper', '4-16-8-3');
-- the architectures fit the packed data: input shape and class count
SELECT a.model_id, a.name, a.model_arch->'config'->'layers'->0->'config'->'batch_shape'->>1 AS inputs,
       (SELECT attributes_shape[2] FROM iris_packed LIMIT 1) AS packed_features,
       s.num_classes[1] AS packed_classes
FROM model_arch_library a, iris_packed_summary s ORDER BY 1;

-- 3a. grid search: 2 ids x 2 optimizers x 2 lr x 2 batch sizes x 2 epochs = 32 configurations
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_grid', ARRAY[1, 2],
    $${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'],
       'optimizer_params_list': [{'optimizer': ['SGD', 'Adam'], 'lr': [0.01, 0.001]}]}$$,
    $${'batch_size': [8, 16], 'epochs': [1, 2]}$$);
SELECT count(*) AS configs, count(DISTINCT model_id) AS models, count(DISTINCT compile_params) AS compiles,
       count(DISTINCT fit_params) AS fits FROM mst_grid;
SELECT * FROM mst_grid WHERE mst_key IN (1, 2, 32) ORDER BY mst_key;
SELECT * FROM mst_grid_summary;

-- 3b. random search: the same random_state gives the same configurations
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_random_a', ARRAY[1, 2],
    $${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'],
       'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [0.0001, 0.1, 'log']},
                                 {'optimizer': ['SGD'], 'lr': [0.001, 0.1, 'log'], 'momentum': [0.5, 0.99, 'log_near_one']}]}$$,
    $${'batch_size': [8, 16, 32], 'epochs': [1]}$$, 'random', 6, 42);
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_random_b', ARRAY[1, 2],
    $${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'],
       'optimizer_params_list': [{'optimizer': ['Adam'], 'lr': [0.0001, 0.1, 'log']},
                                 {'optimizer': ['SGD'], 'lr': [0.001, 0.1, 'log'], 'momentum': [0.5, 0.99, 'log_near_one']}]}$$,
    $${'batch_size': [8, 16, 32], 'epochs': [1]}$$, 'random', 6, 42);
SELECT count(*) AS configs,
       count(*) FILTER (WHERE (a.model_id, a.compile_params, a.fit_params) = (b.model_id, b.compile_params, b.fit_params)) AS identical
FROM mst_random_a a JOIN mst_random_b b USING (mst_key);

-- 3c. explicit lists; duplicates that differ only in spacing and key order collapse; appending skips repeats
SELECT madlib_dl.load_model_selection_table('model_arch_library', 'mst_list', ARRAY[2, 1, 2],
    ARRAY[$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$,
          $$optimizer='Adam(lr=0.01)',loss='categorical_crossentropy',metrics=['accuracy']$$],
    ARRAY['batch_size=16, epochs=1', 'epochs=1,batch_size=16', 'batch_size=32, epochs=1']);
SELECT * FROM mst_list ORDER BY mst_key;
SELECT madlib_dl.load_model_selection_table('model_arch_library', 'mst_list', ARRAY[1],
    ARRAY[$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$],
    ARRAY['batch_size=32, epochs=1', 'batch_size=64, epochs=1']);
SELECT count(*) AS configs FROM mst_list;

-- 4. a model id that is not there, then deleting a model
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_bad', ARRAY[1, 3],
    $${'loss': ['categorical_crossentropy'], 'optimizer_params_list': [{'optimizer': ['Adam']}]}$$,
    $${'batch_size': [8]}$$);
SELECT madlib_dl.delete_keras_model('model_arch_library', 2);
SELECT model_id, name FROM model_arch_library ORDER BY 1;
SELECT to_regclass('mst_bad') IS NULL AS nothing_created;
