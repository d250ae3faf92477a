package prompt

// Oracle returns tiktoken-go's encoder of an encoding, loaded once, for
// the tests that check counts against tiktoken-go.
var Oracle = oracleOf
