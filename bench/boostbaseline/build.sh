#!/usr/bin/env bash
# bench/boostbaseline/build.sh OUT: build the Boost.Interprocess baseline
# (bbench.cpp) into the executable OUT with g++ -O2 -pthread. Boost.Interprocess
# is header-only: only libboost-dev's headers are needed, no Boost library.
#
# Exit status: 0 built; 3 skipped, because the Boost headers
# (/usr/include/boost/interprocess/, or $BOOST_INCLUDE/boost/interprocess/)
# are not installed, with one line on stderr saying so; 2 usage; anything
# else, the compiler's failure.
#
# Environment: CXX (default g++), BOOST_INCLUDE (a directory holding
# boost/interprocess/, default /usr/include).
set -euo pipefail
if [ $# -ne 1 ]; then
	echo "usage: $0 OUT" >&2
	exit 2
fi
inc=${BOOST_INCLUDE:-/usr/include}
if [ ! -d "$inc/boost/interprocess" ]; then
	echo "boost baseline skipped: libboost-dev is not installed (apt-get install libboost-dev)" >&2
	exit 3
fi
src="$(cd "$(dirname "$0")" && pwd)/bbench.cpp"
iflag=()
[ "$inc" != /usr/include ] && iflag=(-isystem "$inc")
exec "${CXX:-g++}" -O2 -Wall -pthread ${iflag[@]+"${iflag[@]}"} -o "$1" "$src"
