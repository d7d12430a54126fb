-- load_model_selection_table / generate_model_configs from psql: MADlib's model selection ("mst") table.
CREATE EXTENSION madlib_dl;

-- a model architecture table as load_keras_model makes it, filled by hand (ids 1 to 3)
CREATE TABLE model_arch_library (model_id SERIAL PRIMARY KEY, model_arch JSON, model_weights BYTEA,
                                 name TEXT, description TEXT, __internal_madlib_id__ TEXT);
INSERT INTO model_arch_library (model_arch, name) VALUES ('{}', 'a'), ('{}', 'b'), ('{}', 'c');

-- help: summary, usage, unknown topic
SELECT madlib_dl.load_model_selection_table() LIKE 'load_model_selection_table: make (or append to)%' AS summary_ok;
SELECT position('compile_params_list    VARCHAR[]' IN madlib_dl.load_model_selection_table('usage')) > 0 AS usage_ok;
SELECT madlib_dl.generate_model_configs() LIKE 'generate_model_configs: make (or append to)%' AS summary_ok;
SELECT position('Example' IN madlib_dl.generate_model_configs('?')) > 0 AS usage_ok;
SELECT madlib_dl.generate_model_configs('grids');

-- load_model_selection_table: 2 model ids x 2 compile x 2 fit = 8 rows; equal strings count once
SELECT madlib_dl.load_model_selection_table('model_arch_library', 'mst_table', ARRAY[2, 1, 2],
    ARRAY[$$loss='categorical_crossentropy', optimizer='Adam(lr=0.01)', metrics=['accuracy']$$,
          $$loss='categorical_crossentropy', optimizer='SGD(lr=0.1, momentum=0.9)', metrics=['accuracy']$$,
          $$metrics=['accuracy'], optimizer='adam(learning_rate=0.01)', loss='categorical_crossentropy'$$],
    ARRAY['batch_size=32, epochs=1', 'epochs=1,batch_size=32', 'batch_size=64, epochs=1']);
SELECT * FROM mst_table ORDER BY mst_key;
SELECT * FROM mst_table_summary;
\d mst_table

-- appending: new rows are added, rows already there skipped
SELECT madlib_dl.load_model_selection_table('model_arch_library', 'mst_table', ARRAY[3, 1],
    ARRAY[$$loss='categorical_crossentropy',optimizer='Adam(lr=0.01)',metrics=['accuracy']$$],
    ARRAY['batch_size=64,epochs=1']);
SELECT * FROM mst_table WHERE mst_key > 8 ORDER BY mst_key;

-- generate_model_configs, grid search: 2 model ids x 2 optimizers x 2 lr x 2 batch sizes x 2 epochs = 32 rows
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_grid', ARRAY[1, 2],
    $${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'],
       'optimizer_params_list': [{'optimizer': ['sgd', 'adam'], 'lr': [0.01, 0.001]}]}$$,
    $${'batch_size': [32, 64], 'epochs': [1, 2]}$$);
SELECT count(*) AS configs, count(DISTINCT compile_params) AS compile_params, count(DISTINCT fit_params) AS fit_params
FROM mst_grid;
SELECT * FROM mst_grid WHERE mst_key IN (1, 2, 9, 32) ORDER BY mst_key;

-- random search: the same random_state gives the same configurations
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_random', ARRAY[1, 2, 3],
    $${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'],
       'optimizer_params_list': [
           {'optimizer': ['SGD'], 'lr': [0.0001, 0.1, 'log'], 'momentum': [0.9, 0.99, 'log_near_one']},
           {'optimizer': ['Adam'], 'lr': [0.001, 0.01, 'log']}]}$$,
    $${'batch_size': [32, 64, 128], 'epochs': [1]}$$, 'random', 5, 42);
SELECT * FROM mst_random ORDER BY mst_key;
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_random2', ARRAY[1, 2, 3],
    $${'loss': ['categorical_crossentropy'], 'metrics': ['accuracy'],
       'optimizer_params_list': [
           {'optimizer': ['SGD'], 'lr': [0.0001, 0.1, 'log'], 'momentum': [0.9, 0.99, 'log_near_one']},
           {'optimizer': ['Adam'], 'lr': [0.001, 0.01, 'log']}]}$$,
    $${'batch_size': [32, 64, 128], 'epochs': [1]}$$, 'rand', 5, 42);
SELECT count(*) AS same_rows FROM mst_random a JOIN mst_random2 b USING (mst_key, model_id, compile_params, fit_params);
-- a space smaller than num_configs gives what it has
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_small', ARRAY[1],
    $${'loss': ['mse']}$$, $${'batch_size': [8, 16]}$$, 'r', 10, 1);
SELECT * FROM mst_small ORDER BY mst_key;
-- grid values that mean the same collapse (lr and learning_rate, any case of the optimizer name)
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_small', ARRAY[1],
    $${'loss': ['mse'], 'optimizer_params_list': [{'optimizer': ['Adam', 'ADAM'], 'lr': [0.01]},
                                                   {'optimizer': ['adam'], 'learning_rate': [0.01]}]}$$,
    $${'batch_size': [8, 16]}$$, 'grid');
SELECT * FROM mst_small ORDER BY mst_key;

-- bad input: one clear error each, nothing created
SELECT madlib_dl.load_model_selection_table('model_arch_library', 'mst_bad', ARRAY[1, 7],
    ARRAY[$$loss='mse', optimizer='Adam'$$], ARRAY['']);
SELECT madlib_dl.load_model_selection_table('model_arch_library', 'mst_bad', ARRAY[1],
    ARRAY[$$loss='mse', optimizer='Adam'$$, $$loss='mse', optimizer='Adam(lr=0.1, momentum=0.9)'$$], ARRAY['']);
SELECT madlib_dl.load_model_selection_table('model_arch_library', 'mst_bad', ARRAY[1],
    ARRAY[$$loss='mse', optimizer='Adam'$$], ARRAY['batch_size=32', 'batch_size=32.5']);
SELECT madlib_dl.load_model_selection_table('model_arch_library', 'mst_bad', ARRAY[1],
    ARRAY[$$loss='mse', optimizer='Adam'$$], ARRAY[''], 'custom_functions');
SELECT madlib_dl.load_model_selection_table('model_arch_library', 'x; DROP TABLE model_arch_library', ARRAY[1],
    ARRAY[$$loss='mse', optimizer='Adam'$$], ARRAY['']);
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_bad', ARRAY[1],
    $${'loss': ['mse'], 'optimizer': ['Adam']}$$, $${'epochs': [1]}$$);
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_bad', ARRAY[1],
    $${'loss': ['mse'], 'optimizer_params_list': [{'optimizer': ['SGD'], 'lr': [0.001, 0.1, 'log']}]}$$,
    $${'epochs': [1]}$$);
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_bad', ARRAY[1],
    $${'loss': ['mse'], 'optimizer_params_list': [{'optimizer': ['SGD'], 'lr': [0.001, 0.1, 'log']}]}$$,
    $${'epochs': [1]}$$, 'random');
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_bad', ARRAY[1],
    $${'loss': ['mse']}$$, $${'epochs': 1}$$);
SELECT madlib_dl.generate_model_configs('model_arch_library', 'mst_bad', ARRAY[1],
    $${'loss': ['mse']}$$, $${'epochs': [1]}$$, 'bayesian');
SELECT to_regclass('mst_bad') IS NULL AND to_regclass('mst_bad_summary') IS NULL AS nothing_created;
SELECT count(*) AS arch_rows FROM model_arch_library;

-- a new arch table for the same mst table is refused
CREATE TABLE other_arch AS SELECT * FROM model_arch_library;
SELECT madlib_dl.generate_model_configs('other_arch', 'mst_grid', ARRAY[1],
    $${'loss': ['mse']}$$, $${'epochs': [1]}$$);
SELECT count(*) AS still_32 FROM mst_grid;
