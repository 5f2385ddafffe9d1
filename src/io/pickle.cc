#include "io/pickle.h"

#include <bit>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "util/error.h"

namespace trex {

PickleValue::~PickleValue() {
  std::vector<PickleValuePtr> work;
  auto harvest = [&work](PickleValue& v) {
    for (auto& c : v.items) work.push_back(std::move(c));
    v.items.clear();
    for (auto& kv : v.dict) {
      work.push_back(std::move(kv.first));
      work.push_back(std::move(kv.second));
    }
    v.dict.clear();
  };
  harvest(*this);
  while (!work.empty()) {
    PickleValuePtr p = std::move(work.back());
    work.pop_back();
    if (p && p.use_count() == 1) harvest(*p);
  }
}

namespace {

using Kind = PickleValue::Kind;

constexpr size_t kMaxTensorRank = 64;
constexpr size_t kMaxPickleName = 4096;  // storage keys, tensor names

}  // namespace

uint64_t pickle_copy_budget(size_t pickle_bytes) { return 4 * static_cast<uint64_t>(pickle_bytes) + (uint64_t{1} << 20); }

namespace {

enum class GlobalRole { kOrderedDict, kRebuildTensorV2, kRebuildTensor, kRebuildParameter, kStorageType, kDType };

struct AllowedGlobal {
  GlobalRole role;
  DType dtype;
};

const std::unordered_map<std::string, AllowedGlobal>& allowed_globals() {
  static const std::unordered_map<std::string, AllowedGlobal> table = [] {
    std::unordered_map<std::string, AllowedGlobal> t;
    t["collections.OrderedDict"] = {GlobalRole::kOrderedDict, DType::kF32};
    t["torch._utils._rebuild_tensor_v2"] = {GlobalRole::kRebuildTensorV2, DType::kF32};
    t["torch._utils._rebuild_tensor"] = {GlobalRole::kRebuildTensor, DType::kF32};
    t["torch._utils._rebuild_parameter"] = {GlobalRole::kRebuildParameter, DType::kF32};
    t["torch._utils._rebuild_parameter_with_state"] = {GlobalRole::kRebuildParameter, DType::kF32};
    const std::pair<const char*, DType> storages[] = {
        {"FloatStorage", DType::kF32}, {"HalfStorage", DType::kF16},  {"BFloat16Storage", DType::kBF16},
        {"DoubleStorage", DType::kF64}, {"LongStorage", DType::kI64}, {"IntStorage", DType::kI32},
        {"ShortStorage", DType::kI16}, {"CharStorage", DType::kI8},   {"ByteStorage", DType::kU8},
        {"BoolStorage", DType::kBool}};
    for (const auto& [name, dt] : storages) {
      t[std::string("torch.") + name] = {GlobalRole::kStorageType, dt};
      t[std::string("torch.cuda.") + name] = {GlobalRole::kStorageType, dt};  // checkpoints saved from GPU by old torch
    }
    const std::pair<const char*, DType> dtypes[] = {
        {"float32", DType::kF32}, {"float", DType::kF32},  {"float16", DType::kF16}, {"half", DType::kF16},
        {"bfloat16", DType::kBF16}, {"float64", DType::kF64}, {"double", DType::kF64}, {"int64", DType::kI64},
        {"long", DType::kI64},    {"int32", DType::kI32},  {"int", DType::kI32},     {"int16", DType::kI16},
        {"short", DType::kI16},   {"int8", DType::kI8},    {"uint8", DType::kU8},    {"bool", DType::kBool}};
    for (const auto& [name, dt] : dtypes) t[std::string("torch.") + name] = {GlobalRole::kDType, dt};
    return t;
  }();
  return table;
}

std::string printable(const std::string& s) {
  std::string out;
  for (char c : s.substr(0, 100)) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) {
      out += c;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    }
  }
  if (s.size() > 100) out += "...";
  return out;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kBigInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kBytes: return "bytes";
    case Kind::kTuple: return "tuple";
    case Kind::kList: return "list";
    case Kind::kDict: return "dict";
    case Kind::kGlobal: return "global";
    case Kind::kStorage: return "storage";
    case Kind::kTensor: return "tensor";
  }
  return "value";
}

PickleValuePtr make(Kind k) {
  auto v = std::make_shared<PickleValue>();
  v->kind = k;
  return v;
}

class Unpickler {
 public:
  Unpickler(const std::byte* data, size_t size, const std::string& file, size_t base)
      : p_(reinterpret_cast<const uint8_t*>(data)), n_(size), file_(file), base_(base),
        budget_(pickle_copy_budget(size)) {}

  PickleValuePtr run(size_t* consumed) {
    while (true) {
      if (pos_ >= n_) fail("truncated pickle: no STOP opcode before the end of the data");
      op_pos_ = pos_;
      const uint8_t op = p_[pos_++];
      switch (op) {
        case 0x80:  // PROTO
          take(1);
          break;
        case 0x95:  // FRAME (a framing hint only)
          take(8);
          break;
        case '}': push(make(Kind::kDict)); break;
        case ']': push(make(Kind::kList)); break;
        case ')': push(make(Kind::kTuple)); break;
        case '(': marks_.push_back(stack_.size()); break;
        case 'X': push_string(Kind::kString, le(4)); break;           // BINUNICODE
        case 0x8c: push_string(Kind::kString, le(1)); break;          // SHORT_BINUNICODE
        case 0x8d: push_string(Kind::kString, le(8)); break;          // BINUNICODE8
        case 'B': push_string(Kind::kBytes, le(4)); break;            // BINBYTES
        case 'C': push_string(Kind::kBytes, le(1)); break;            // SHORT_BINBYTES
        case 0x8e: push_string(Kind::kBytes, le(8)); break;           // BINBYTES8
        case 'T': push_string(Kind::kString, le(4)); break;           // BINSTRING (py2 str)
        case 'U': push_string(Kind::kString, le(1)); break;           // SHORT_BINSTRING
        case 'J': push_int(static_cast<int32_t>(static_cast<uint32_t>(le(4)))); break;  // BININT
        case 'K': push_int(static_cast<int64_t>(le(1))); break;       // BININT1
        case 'M': push_int(static_cast<int64_t>(le(2))); break;       // BININT2
        case 0x8a: push_long(le(1)); break;                           // LONG1
        case 0x8b: push_long(le(4)); break;                           // LONG4
        case 'G': {                                                   // BINFLOAT (big-endian double)
          const uint8_t* b = take(8);
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | b[i];
          auto v = make(Kind::kFloat);
          v->f = std::bit_cast<double>(bits);
          push(v);
          break;
        }
        case 0x88:
        case 0x89: {  // NEWTRUE / NEWFALSE
          auto v = make(Kind::kBool);
          v->b = op == 0x88;
          push(v);
          break;
        }
        case 'N': push(make(Kind::kNone)); break;
        case 't': {  // TUPLE
          auto v = make(Kind::kTuple);
          v->items = pop_mark();
          push(v);
          break;
        }
        case 0x85:
        case 0x86:
        case 0x87: {  // TUPLE1..3
          const size_t k = op - 0x84;
          need_stack(k);
          auto v = make(Kind::kTuple);
          v->items.assign(stack_.end() - static_cast<std::ptrdiff_t>(k), stack_.end());
          stack_.resize(stack_.size() - k);
          push(v);
          break;
        }
        case 'l': {  // LIST
          auto v = make(Kind::kList);
          v->items = pop_mark();
          push(v);
          break;
        }
        case 'd': {  // DICT
          auto items = pop_mark();
          auto v = make(Kind::kDict);
          add_pairs(*v, items);
          push(v);
          break;
        }
        case 'q': memo_put(le(1)); break;       // BINPUT
        case 'r': memo_put(le(4)); break;       // LONG_BINPUT
        case 0x94: memo_put(memo_.size()); break;  // MEMOIZE
        case 'h': memo_get(le(1)); break;       // BINGET
        case 'j': memo_get(le(4)); break;       // LONG_BINGET
        case 's': {                             // SETITEM
          need_stack(3);
          PickleValuePtr value = pop(), key = pop();
          PickleValue& d = *top();
          if (d.kind != Kind::kDict) fail(std::string("SETITEM on a ") + kind_name(d.kind));
          d.dict.emplace_back(std::move(key), std::move(value));
          break;
        }
        case 'u': {  // SETITEMS
          auto items = pop_mark();
          need_stack(1);
          PickleValue& d = *top();
          if (d.kind != Kind::kDict) fail(std::string("SETITEMS on a ") + kind_name(d.kind));
          add_pairs(d, items);
          break;
        }
        case 'a': {  // APPEND
          need_stack(2);
          PickleValuePtr v = pop();
          PickleValue& l = *top();
          if (l.kind != Kind::kList) fail(std::string("APPEND on a ") + kind_name(l.kind));
          l.items.push_back(std::move(v));
          break;
        }
        case 'e': {  // APPENDS
          auto items = pop_mark();
          need_stack(1);
          PickleValue& l = *top();
          if (l.kind != Kind::kList) fail(std::string("APPENDS on a ") + kind_name(l.kind));
          for (auto& it : items) l.items.push_back(std::move(it));
          break;
        }
        case '0': need_stack(1); stack_.pop_back(); break;  // POP
        case '1': pop_mark(); break;                          // POP_MARK
        case '2': need_stack(1); push(top()); break;          // DUP
        case 'c': {  // GLOBAL "module\nname\n"
          std::string module = line();
          std::string name = line();
          push(global(module, name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          need_stack(2);
          PickleValuePtr name = pop(), module = pop();
          if (module->kind != Kind::kString || name->kind != Kind::kString) fail("STACK_GLOBAL needs two strings");
          push(global(module->s, name->s));
          break;
        }
        case 'R': {  // REDUCE
          need_stack(2);
          PickleValuePtr args = pop(), callable = pop();
          push(reduce(*callable, *args));
          break;
        }
        case 'b': {  // BUILD: sets state on an object; ignored (e.g. OrderedDict._metadata)
          need_stack(2);
          pop();
          break;
        }
        case 'Q': {  // BINPERSID
          need_stack(1);
          PickleValuePtr pid = pop();
          push(persistent_load(*pid));
          break;
        }
        case '.': {  // STOP
          need_stack(1);
          if (consumed) *consumed = pos_;
          return stack_.back();
        }
        default: {
          char buf[64];
          if (op >= 0x20 && op < 0x7f) {
            std::snprintf(buf, sizeof buf, "0x%02x ('%c')", op, op);
          } else {
            std::snprintf(buf, sizeof buf, "0x%02x", op);
          }
          throw InputError(file_, std::string("pickle: unknown or unsupported opcode ") + buf + " at offset " +
                                      std::to_string(base_ + op_pos_));
        }
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& problem) const {
    throw InputError(file_, "pickle: " + problem + " (opcode at offset " + std::to_string(base_ + op_pos_) + ")");
  }

  const uint8_t* take(uint64_t k) {
    if (k > n_ - pos_) fail("truncated pickle: needs " + std::to_string(k) + " more bytes");
    const uint8_t* b = p_ + pos_;
    pos_ += static_cast<size_t>(k);
    return b;
  }
  uint64_t le(int k) {
    const uint8_t* b = take(static_cast<uint64_t>(k));
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; --i) v = (v << 8) | b[i];
    return v;
  }
  std::string line() {
    std::string s;
    while (true) {
      if (pos_ >= n_) fail("truncated pickle: unterminated GLOBAL");
      char c = static_cast<char>(p_[pos_++]);
      if (c == '\n') return s;
      s += c;
      if (s.size() > 1000) fail("GLOBAL name too long");
    }
  }

  void push(PickleValuePtr v) { stack_.push_back(std::move(v)); }
  void need_stack(size_t k) const {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() < floor + k) fail("stack underflow");
  }
  PickleValuePtr pop() {
    need_stack(1);
    PickleValuePtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  const PickleValuePtr& top() const { return stack_.back(); }
  std::vector<PickleValuePtr> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PickleValuePtr> items(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(m)),
                                      std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return items;
  }
  void add_pairs(PickleValue& d, std::vector<PickleValuePtr>& items) {
    if (items.size() % 2 != 0) fail("odd number of items for a dict");
    for (size_t i = 0; i < items.size(); i += 2) d.dict.emplace_back(std::move(items[i]), std::move(items[i + 1]));
  }

  void push_string(Kind k, uint64_t len) {
    const uint8_t* b = take(len);
    auto v = make(k);
    v->s.assign(reinterpret_cast<const char*>(b), static_cast<size_t>(len));
    push(v);
  }
  void push_int(int64_t i) {
    auto v = make(Kind::kInt);
    v->i = i;
    push(v);
  }
  void push_long(uint64_t len) {
    const uint8_t* b = take(len);
    if (len <= 8) {
      uint64_t u = 0;
      for (size_t i = len; i-- > 0;) u = (u << 8) | b[i];
      if (len > 0 && len < 8 && (b[len - 1] & 0x80)) u |= ~uint64_t{0} << (8 * len);  // sign-extend
      push_int(static_cast<int64_t>(u));
    } else {
      auto v = make(Kind::kBigInt);
      v->s.assign(reinterpret_cast<const char*>(b), static_cast<size_t>(len));
      push(v);
    }
  }

  void memo_put(uint64_t idx) {
    need_stack(1);
    memo_[idx] = top();
  }
  void memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) fail("memo key " + std::to_string(idx) + " not found");
    push(it->second);
  }

  PickleValuePtr global(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    if (!allowed_globals().count(full)) {
      throw InputError(file_, "pickle references forbidden global '" + printable(full) +
                                  "' (trex only loads tensors; no code is executed)");
    }
    auto v = make(Kind::kGlobal);
    v->s = full;
    return v;
  }

  static bool is_int(const PickleValue& v) { return v.kind == Kind::kInt; }
  std::vector<int64_t> int_tuple(const PickleValue& v, const char* what) {
    if (v.kind != Kind::kTuple && v.kind != Kind::kList) fail(std::string("tensor ") + what + " must be a tuple of ints");
    if (v.items.size() > kMaxTensorRank) {
      fail(std::string("tensor ") + what + " has " + std::to_string(v.items.size()) + " dimensions (at most " +
           std::to_string(kMaxTensorRank) + ")");
    }
    charge(v.items.size());
    std::vector<int64_t> out;
    for (const auto& e : v.items) {
      if (!is_int(*e)) fail(std::string("tensor ") + what + " must be a tuple of ints");
      out.push_back(e->i);
    }
    return out;
  }

  PickleValuePtr reduce(const PickleValue& callable, const PickleValue& args) {
    if (callable.kind != Kind::kGlobal) fail(std::string("REDUCE on a ") + kind_name(callable.kind) + ", not a global");
    if (args.kind != Kind::kTuple) fail("REDUCE arguments must be a tuple");
    const AllowedGlobal& g = allowed_globals().at(callable.s);
    const auto& a = args.items;
    switch (g.role) {
      case GlobalRole::kOrderedDict: {
        auto d = make(Kind::kDict);
        if (a.empty()) return d;
        if (a.size() == 1 && (a[0]->kind == Kind::kList || a[0]->kind == Kind::kTuple)) {
          charge(a[0]->items.size());
          for (const auto& pair : a[0]->items) {
            if ((pair->kind != Kind::kTuple && pair->kind != Kind::kList) || pair->items.size() != 2) {
              fail("OrderedDict argument must be a list of pairs");
            }
            d->dict.emplace_back(pair->items[0], pair->items[1]);
          }
          return d;
        }
        fail("unsupported OrderedDict arguments");
      }
      case GlobalRole::kRebuildTensorV2:
      case GlobalRole::kRebuildTensor: {
        // (storage, storage_offset, size, stride[, requires_grad, backward_hooks[, metadata]])
        if (a.size() < 4) fail("tensor rebuild needs at least 4 arguments, got " + std::to_string(a.size()));
        if (a[0]->kind != Kind::kStorage) fail("tensor rebuild: first argument is not a storage");
        if (!is_int(*a[1]) || a[1]->i < 0) fail("tensor rebuild: storage offset must be a non-negative int");
        auto t = std::make_shared<PickledTensor>();
        charge(1 + a[0]->storage->key.size() + a[0]->storage->location.size());
        t->storage = *a[0]->storage;
        t->storage_offset = a[1]->i;
        t->size = int_tuple(*a[2], "size");
        t->stride = int_tuple(*a[3], "stride");
        if (t->size.size() != t->stride.size()) fail("tensor rebuild: size and stride have different lengths");
        for (int64_t d : t->size) {
          if (d < 0) fail("tensor rebuild: negative size");
        }
        auto v = make(Kind::kTensor);
        v->tensor = std::move(t);
        return v;
      }
      case GlobalRole::kRebuildParameter: {
        // (data, requires_grad, backward_hooks[, state])
        if (a.empty() || a[0]->kind != Kind::kTensor) fail("parameter rebuild: first argument is not a tensor");
        return a[0];
      }
      case GlobalRole::kStorageType:
      case GlobalRole::kDType:
        break;
    }
    fail("cannot call '" + callable.s + "'");
  }

  PickleValuePtr persistent_load(const PickleValue& pid) {
    // ('storage', storage_type, key, location, numel[, view_metadata])
    if (pid.kind != Kind::kTuple || pid.items.size() < 5 || pid.items.size() > 6) {
      fail("persistent id must be a tuple ('storage', type, key, location, numel)");
    }
    const auto& a = pid.items;
    if (a[0]->kind != Kind::kString || a[0]->s != "storage") fail("persistent id is not a storage");
    if (a[1]->kind != Kind::kGlobal) fail("persistent id: storage type is not a global");
    const AllowedGlobal& g = allowed_globals().at(a[1]->s);
    if (g.role != GlobalRole::kStorageType && g.role != GlobalRole::kDType) {
      fail("persistent id: '" + a[1]->s + "' is not a storage type");
    }
    auto s = std::make_shared<PickledStorage>();
    s->dtype = g.dtype;
    if (a[2]->kind == Kind::kString) {
      s->key = a[2]->s;
    } else if (a[2]->kind == Kind::kInt) {
      s->key = std::to_string(a[2]->i);
    } else {
      fail("persistent id: storage key must be a string");
    }
    if (s->key.size() > kMaxPickleName) fail("persistent id: storage key longer than " + std::to_string(kMaxPickleName) + " bytes");
    if (a[3]->kind == Kind::kString) s->location = a[3]->s.substr(0, kMaxPickleName);
    if (!is_int(*a[4]) || a[4]->i < 0) fail("persistent id: storage size must be a non-negative int");
    s->numel = a[4]->i;
    if (a.size() == 6 && a[5]->kind != Kind::kNone) {
      fail("storage '" + printable(s->key) + "' is a view of another storage (legacy view_metadata); not supported");
    }
    auto v = make(Kind::kStorage);
    v->storage = std::move(s);
    return v;
  }

  // Work that memo reuse can repeat without more input (copying a memoized list into each OrderedDict, a
  // shape tuple into each tensor, storage keys into each reference) is charged against a budget proportional
  // to the pickle's size, so a small hostile pickle cannot expand into gigabytes.
  void charge(uint64_t units) {
    if (units > budget_) {
      throw InputError(file_, "pickle: memo/REDUCE reuse would copy more than " +
                                  std::to_string(pickle_copy_budget(n_)) + " items for a " + std::to_string(n_) +
                                  "-byte pickle (amplification refused; opcode at offset " +
                                  std::to_string(base_ + op_pos_) + ")");
    }
    budget_ -= units;
  }

  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  const std::string& file_;
  size_t base_;
  std::vector<PickleValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PickleValuePtr> memo_;
  uint64_t budget_;
};

}  // namespace

PickleValuePtr unpickle(const std::byte* data, size_t size, const std::string& file, size_t* consumed,
                        size_t base_offset) {
  Unpickler u(data, size, file, base_offset);
  return u.run(consumed);
}

std::vector<std::pair<std::string, PickledTensor>> state_dict_tensors(const PickleValue& root,
                                                                      const std::string& file, uint64_t budget) {
  if (root.kind != Kind::kDict) {
    throw InputError(file, std::string("the checkpoint pickle is a ") + kind_name(root.kind) +
                               ", expected a state dict (a dict of tensors)");
  }
  std::vector<std::pair<std::string, PickledTensor>> out;
  for (const auto& [k, v] : root.dict) {
    if (!v || v->kind != Kind::kTensor) continue;  // non-tensor entries (metadata, counters) are ignored
    if (k->kind != Kind::kString) throw InputError(file, "state dict has a non-string key for a tensor");
    if (k->s.size() > kMaxPickleName) {
      throw InputError(file, "state dict key longer than " + std::to_string(kMaxPickleName) + " bytes");
    }
    // Each entry copies its name and tensor description: memo reuse must not multiply them without bound.
    const uint64_t cost = 1 + k->s.size() + v->tensor->storage.key.size() + v->tensor->storage.location.size() +
                          2 * v->tensor->size.size();
    if (cost > budget) {
      throw InputError(file, "state dict: " + std::to_string(out.size()) +
                                 " entries already (memo reuse); the pickle expands beyond trex's limit");
    }
    budget -= cost;
    out.emplace_back(k->s, *v->tensor);
  }
  return out;
}

}  // namespace trex
