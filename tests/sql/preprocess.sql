-- training_preprocessor_dl and validation_preprocessor_dl on iris (150 rows, text labels), from psql.
CREATE EXTENSION madlib_dl;
CREATE TABLE iris (id INTEGER, attributes DOUBLE PRECISION[], class_text VARCHAR);
\copy iris FROM 'data/iris.csv' WITH (FORMAT csv)
CREATE TABLE iris_train AS SELECT * FROM iris WHERE id % 5 <> 0;
CREATE TABLE iris_test AS SELECT * FROM iris WHERE id % 5 = 0;

-- three virtual segments; buffer_size 16 is a starting point: 120 rows → 9 buffers, 3 per segment
SET madlib_dl.num_segments = 3;
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'iris_packed', 'class_text', 'attributes', 16);
\d iris_packed
SELECT buffer_id, __dist_key__, attributes_shape, class_text_shape,
       length(attributes) AS feature_bytes, length(class_text) AS label_bytes
FROM iris_packed ORDER BY buffer_id;
SELECT * FROM iris_packed_summary;

-- buffers and rows per segment
SELECT __dist_key__, count(*) AS buffers, sum(attributes_shape[1]) AS examples
FROM iris_packed GROUP BY 1 ORDER BY 1;

-- every example once: examples per class, read from the int16 one-hot bytes
SELECT c AS class_index, sum(get_byte(class_text, (r * 3 + c) * 2)) AS examples
FROM iris_packed, generate_series(0, class_text_shape[1] - 1) r, generate_series(0, 2) c
GROUP BY c ORDER BY c;

-- the shuffle is reproducible: packing again gives the same bytes
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'iris_packed_again', 'class_text', 'attributes', 16);
SELECT bool_and(a.attributes = b.attributes AND a.class_text = b.class_text) AS same_bytes
FROM iris_packed a JOIN iris_packed_again b USING (buffer_id);

-- a count of segments given directly; normalizing_const divides the features
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'iris_two', 'class_text', 'attributes',
                                          NULL, 10.0, ARRAY[4], '2');
SELECT buffer_id, __dist_key__, attributes_shape, class_text_shape FROM iris_two ORDER BY buffer_id;
SELECT class_text_class_values, normalizing_const, num_classes, distribution_rules, num_segments
FROM iris_two_summary;

-- validation: the training table's classes, normalizing constant and segments; no shuffle
SELECT madlib_dl.validation_preprocessor_dl('iris_test', 'iris_test_packed', 'class_text', 'attributes',
                                            'iris_packed');
SELECT buffer_id, __dist_key__, attributes_shape, class_text_shape FROM iris_test_packed ORDER BY buffer_id;
SELECT class_text_class_values, buffer_size, normalizing_const, num_classes, distribution_rules, num_segments
FROM iris_test_packed_summary;

-- help
SELECT madlib_dl.training_preprocessor_dl() LIKE 'training_preprocessor_dl: pack%' AS summary_ok,
       madlib_dl.training_preprocessor_dl('usage') LIKE '%distribution_rules  TEXT%' AS usage_ok,
       madlib_dl.validation_preprocessor_dl('?') LIKE '%training_preprocessor_table VARCHAR%' AS usage_ok;

-- bad input: one clear error each, nothing created
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'bad', 'class_text', 'attributes', 0);
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'bad', 'class_text', 'attributes', NULL, -1);
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'bad', 'class_text', 'attributes', NULL, 1, ARRAY[2]);
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'bad', 'species', 'attributes');
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'bad', 'class_text', 'id');
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'bad', 'class_text', 'attributes', NULL, 1, NULL, 'gpu_segments');
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'bad', 'class_text', 'attributes', NULL, 1, NULL, 'dbid_table');
SELECT madlib_dl.training_preprocessor_dl('iris_train', 'iris_packed', 'class_text', 'attributes');
SELECT madlib_dl.training_preprocessor_dl('iris_train; DROP TABLE iris', 'bad', 'class_text', 'attributes');
SELECT madlib_dl.training_preprocessor_dl(NULL, 'bad', 'class_text', 'attributes');
SELECT madlib_dl.training_preprocessor_dl('iris_train', '', 'class_text', 'attributes');
CREATE TABLE iris_empty (LIKE iris);
SELECT madlib_dl.training_preprocessor_dl('iris_empty', 'bad', 'class_text', 'attributes');
CREATE TABLE iris_ragged AS SELECT id, CASE WHEN id = 7 THEN attributes[1:3] ELSE attributes END AS attributes,
       class_text FROM iris;
SELECT madlib_dl.training_preprocessor_dl('iris_ragged', 'bad', 'class_text', 'attributes');
CREATE TABLE iris_unknown AS SELECT id, attributes, 'daisy'::varchar AS class_text FROM iris_test LIMIT 2;
SELECT madlib_dl.validation_preprocessor_dl('iris_unknown', 'bad', 'class_text', 'attributes', 'iris_packed');
SELECT madlib_dl.validation_preprocessor_dl('iris_test', 'bad', 'class_text', 'attributes', 'iris_train');
SELECT madlib_dl.validation_preprocessor_dl('iris_test', 'bad', 'class_text', 'attributes', 'iris_packed', NULL, '4');
SET madlib_dl.num_segments = 0;
SELECT count(*) AS bad_tables FROM pg_class WHERE relname LIKE 'bad%';
