-- madlib_keras_predict_byom / madlib_keras_predict from psql, with a model whose probabilities are known:
-- a Dense(3, softmax) on 4 inputs whose kernel rows are the logs of the probabilities below, so the
-- example e_i (one-hot) gets exactly row i, and the zero example a three-way tie.
--   e_0: 0.65 0.10 0.25   e_1: 0.05 0.35 0.60   e_2: 0.375 0.25 0.375   e_3: 0.10 0.80 0.10   zero: 1/3 each
-- Probabilities are rounded to 4 places (the model computes in float32).
CREATE EXTENSION madlib_dl;

SELECT madlib_dl.load_keras_model('arch', $${"module": "keras", "class_name": "Sequential", "config": {"name": "tiny", "layers": [
  {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 4]}},
  {"module": "keras.layers", "class_name": "Dense", "config": {"units": 3, "activation": "softmax"}}]}}$$,
  -- kernel log(P) (4x3), then bias 0 (3), little-endian float32
  '\x948fdcbe8e5d13c01872b1bf14ba3fc0926086bf78c502bfa0177bbf1872b1bfa0177bbf8e5d13c0be7f64be8e5d13c0000000000000000000000000'::bytea,
  'tiny', 'known probabilities');
SELECT madlib_dl.load_keras_model('arch', model_arch) FROM arch WHERE model_id = 1;  -- model 2: no weights

-- the test table: one example per row; x2 holds 2x as a 2x2 array
CREATE TABLE points (id INTEGER, x REAL[], x2 DOUBLE PRECISION[]);
INSERT INTO points VALUES (1, '{1,0,0,0}', '{{2,0},{0,0}}'), (2, '{0,1,0,0}', '{{0,2},{0,0}}'),
                          (3, '{0,0,1,0}', '{{0,0},{2,0}}'), (4, '{0,0,0,1}', '{{0,0},{0,2}}'),
                          (5, '{0,0,0,0}', '{{0,0},{0,0}}');

-- help
SELECT madlib_dl.madlib_keras_predict_byom() LIKE 'madlib_keras_predict_byom: score a table%' AS summary_ok;
SELECT position('dependent_count' IN madlib_dl.madlib_keras_predict_byom('usage')) > 0 AS usage_ok;
SELECT position('mst_key' IN madlib_dl.madlib_keras_predict('usage')) > 0 AS usage_ok;
SELECT madlib_dl.madlib_keras_predict('tables');

-- 'prob' (the default): every class, ranked; ties rank the lower class index first
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'pred_prob', class_values => ARRAY['cat', 'dog', 'eel']);
SELECT id, class_name, class_value, round(prob::numeric, 4) AS prob, rank FROM pred_prob ORDER BY id, rank;

-- 'response': the most likely class, no rank column
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'pred_response', 'response');
SELECT id, class_name, class_value, round(prob::numeric, 4) AS prob FROM pred_response ORDER BY id;
SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) AS columns
FROM information_schema.columns WHERE table_name = 'pred_response';

-- top k (INTEGER, or a number as text) and a threshold (DOUBLE PRECISION, or as text); x2 divided by 2
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x2', 'pred_top2', 2, normalizing_const => 2.0);
SELECT id, class_value, round(prob::numeric, 4) AS prob, rank FROM pred_top2 ORDER BY id, rank;
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'pred_above', 0.3);
SELECT id, class_value, round(prob::numeric, 4) AS prob, rank FROM pred_above ORDER BY id, rank;
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'pred_text_k', '2');
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'pred_text_p', '0.3');
SELECT (SELECT count(*) FROM pred_text_k) AS top2_rows, (SELECT count(*) FROM pred_text_p) AS above_rows;
-- NULL is 'prob', as in MADlib
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'pred_null', NULL);
SELECT count(*) AS null_rows FROM pred_null;

-- errors: each names its argument, and no output table is left
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'bad', 0);
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'bad', 1.0);
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'bad', 'foo');
SELECT madlib_dl.madlib_keras_predict_byom('arch', 2, 'points', 'id', 'x', 'bad');
SELECT madlib_dl.madlib_keras_predict_byom('arch', 7, 'points', 'id', 'x', 'bad');
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'bad', 'prob', FALSE, ARRAY['a', 'b']);
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'bad', 'prob', FALSE, NULL, NULL, 2);
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'key', 'x', 'bad');
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'id', 'bad');
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'pred_prob');
INSERT INTO points VALUES (6, '{1,2,3}', NULL), (7, NULL, NULL);
SELECT madlib_dl.madlib_keras_predict_byom('arch', 1, 'points', 'id', 'x', 'bad');
SELECT to_regclass('bad') IS NULL AS nothing_created;
