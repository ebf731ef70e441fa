package model

// LogSoftmaxAt is logSoftmaxAt, for the tests of package model_test.
var LogSoftmaxAt = logSoftmaxAt
