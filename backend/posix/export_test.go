package posix

// Hooks for the external tests (package posix_test).

// TempPrefix is tempPrefix.
const TempPrefix = tempPrefix
