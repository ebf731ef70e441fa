package synth

// SwapLeftRight is swapLeftRight, for the external tests.
var SwapLeftRight = swapLeftRight
