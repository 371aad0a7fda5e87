// glibc's allocator tuning (mallopt) and statistics (mallinfo2), which Swift's Glibc module does not
// export.
#pragma once
#if defined(__linux__)
#include <malloc.h>
#endif
