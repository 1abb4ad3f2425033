package memfd

// Hooks for the external tests (package memfd_test).

// AddrPrefix is addrPrefix.
const AddrPrefix = addrPrefix

// Addr is keyAddr.
var Addr = keyAddr
