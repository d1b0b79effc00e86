// The emulator's csrc/include/cnnkernels/async_copy.cuh (this directory comes first on the
// include path): the same functions, with copies held in commit groups until a wait retires them
// (see emu::async_copy16 in emulator.h).
#pragma once

namespace cnnkernels {

inline void cp_async16(void* dst, const void* src, bool valid) { ::emu::async_copy16(dst, src, valid); }

inline void cp_async_commit() { ::emu::async_commit(); }

template <int kPending>
inline void cp_async_wait() {
  static_assert(kPending >= 0, "a count of groups");
  ::emu::async_wait(kPending);
}

}  // namespace cnnkernels
