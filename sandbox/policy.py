"""The restricted-execution policy shared by the host gate and the in-container worker.

One policy, two places: the host compiles every candidate with it before anything
runs (fast rejection with a repair hint for the LLM), and the worker compiles it
again inside the container and executes it with the guarded globals below, so
the container never runs a candidate the gate would have refused.

Everything a candidate may reach is on an ALLOW-LIST (DESIGN §2): the modules it
may import, the names it may take from each of them, the attributes of each kind
of object it can hold (tensors, ActivationStats, results of torch calls, a few
plain Python types) and the builtins. The lists are checked twice:

* statically, where the name is visible: import-from names, every attribute
  name (a name no allowed object has is refused with the line and the fix),
  attribute stores (refused outright), `yield`, f-string tricks;
* at run time, in `_getattr_` (by the kind of the object) and in the import
  hook, where Python itself would otherwise fetch a re-exported `torch.os`.

A module object is a value only if it is one of the allowed namespaces, whose
every attribute access is itself allow-listed, so holding one gives nothing
more than naming it. Nothing formats a string from a template that can name an
attribute: no `str.format`/`format_map`/`format()`, and `%` on strings is refused.

Depends on RestrictedPython, torch and math only (it is imported in the image).
"""

from __future__ import annotations

import ast
import builtins
import math
import sys
import types

import torch
from RestrictedPython import RestrictingNodeTransformer, compile_restricted_exec
from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

from autoprune.pruning import contract
from autoprune.pruning.contract import NAMES as CONTRACT_NAMES
from autoprune.pruning.stats import ActivationStats
from autoprune.sandbox.parser_lock import PARSER_LOCK, parse as parse_python

MAX_SOURCE_BYTES = 64 * 1024
MAX_AST_DEPTH = 100          # nesting of the syntax tree (a 250-term chained sum is 250 deep)
MAX_AST_NODES = 40_000       # 64 KiB of source is at most ~30k nodes in practice


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# ---- what each allowed module offers ----------------------------------------------------------

# Element-wise math, comparisons and reductions: both torch.X(t) and t.X() offer them.
_ELEMENTWISE_AND_REDUCTIONS = _words("""
    abs absolute acos acosh add addcdiv addcmul asin asinh atan atan2 atanh ceil clamp clip
    clamp_min clamp_max copysign cos cosh deg2rad div divide erf erfc erfinv exp exp2 expm1
    float_power floor floor_divide fmod frac hypot lerp lgamma digamma log log10 log1p log2
    logaddexp logaddexp2 logical_and logical_not logical_or logical_xor logit mul multiply neg
    negative pow reciprocal remainder round rsqrt sigmoid sign sgn signbit sin sinh sqrt square
    sub subtract tan tanh true_divide trunc fix xlogy nan_to_num heaviside maximum minimum fmax
    fmin where relu softmax log_softmax eq ne lt le gt ge greater less greater_equal less_equal
    not_equal equal isclose allclose isfinite isinf isnan isneginf isposinf isreal
    sort argsort topk kthvalue msort argmax argmin max min amax amin aminmax sum mean nanmean
    nansum median nanmedian mode prod std var norm quantile nanquantile logsumexp cumsum cumprod
    cummax cummin count_nonzero all any unique unique_consecutive bincount histc histogram diff
    cov corrcoef
""")
_TORCH = _ELEMENTWISE_AND_REDUCTIONS | _words("""
    std_mean var_mean bucketize searchsorted
    reshape flatten unflatten squeeze unsqueeze transpose permute t cat concat concatenate stack
    hstack vstack dstack column_stack row_stack split chunk tensor_split vsplit hsplit dsplit
    narrow select gather scatter scatter_add scatter_reduce index_select index_add index_copy
    index_fill index_put masked_select masked_fill masked_scatter take take_along_dim nonzero
    argwhere flip fliplr flipud roll rot90 tile repeat_interleave broadcast_to broadcast_tensors
    broadcast_shapes diag diagonal diag_embed diagflat tril triu tril_indices triu_indices
    movedim swapaxes swapdims ravel atleast_1d atleast_2d atleast_3d block_diag meshgrid
    cartesian_prod combinations
    tensor as_tensor zeros ones full zeros_like ones_like full_like arange linspace logspace eye
    rand randn randint randperm rand_like randn_like randint_like bernoulli multinomial normal
    matmul mm bmm mv dot vdot outer ger einsum kron inner tensordot cdist cross det logdet
    inverse pinverse cholesky cholesky_solve cholesky_inverse qr svd svd_lowrank pca_lowrank
    trace matrix_power matrix_exp dist renorm cosine_similarity pairwise_distance threshold
    frexp ldexp mvlgamma polygamma sinc i0 positive conj real imag angle
    clone detach numel is_tensor is_floating_point is_complex is_nonzero result_type
    promote_types can_cast finfo iinfo get_default_dtype is_grad_enabled no_grad inference_mode
    Tensor Size dtype device
    float32 float float64 double float16 half bfloat16 int64 long int32 int int16 int8 uint8
    bool complex64 cfloat complex128 cdouble strided contiguous_format preserve_format
    inf nan pi e
    nn linalg special fft
""")
_FUNCTIONAL = _words("""
    relu relu6 leaky_relu elu selu celu gelu silu mish softplus softsign softshrink hardshrink
    tanhshrink sigmoid tanh hardtanh hardsigmoid hardswish logsigmoid softmax log_softmax softmin
    normalize cosine_similarity pairwise_distance pdist linear bilinear pad one_hot threshold
    avg_pool1d max_pool1d avg_pool2d max_pool2d adaptive_avg_pool1d adaptive_max_pool1d
    adaptive_avg_pool2d adaptive_max_pool2d conv1d conv2d unfold fold interpolate layer_norm
    group_norm rms_norm mse_loss l1_loss smooth_l1_loss huber_loss kl_div cross_entropy
    binary_cross_entropy gumbel_softmax dropout
""")
_LINALG = _words("""
    norm vector_norm matrix_norm svd svdvals eig eigh eigvals eigvalsh qr cholesky cholesky_ex
    inv inv_ex pinv solve solve_ex solve_triangular lstsq det slogdet matrix_rank cond
    matrix_power matrix_exp multi_dot vecdot cross diagonal householder_product lu lu_factor
    lu_factor_ex lu_solve ldl_factor ldl_solve tensorinv tensorsolve vander
""")
_SPECIAL = _words("""
    erf erfc erfcx erfinv expit logit log1p expm1 exp2 gammaln gammainc gammaincc digamma psi
    polygamma multigammaln i0 i0e i1 i1e ndtr ndtri log_ndtr sinc entr logsumexp softmax
    log_softmax xlogy xlog1py round zeta bessel_j0 bessel_j1
""")
_FFT = _words("""
    fft ifft rfft irfft fft2 ifft2 rfft2 irfft2 fftn ifftn rfftn irfftn hfft ihfft fftfreq
    rfftfreq fftshift ifftshift
""")
# math is a pure C module without re-exports: its public names are its functions and constants.
_MATH = frozenset(n for n in dir(math) if not n.startswith("_"))

MODULE_NAMES: dict[str, frozenset[str]] = {
    "torch": _TORCH, "torch.nn": frozenset({"functional"}), "torch.nn.functional": _FUNCTIONAL,
    "torch.linalg": _LINALG, "torch.special": _SPECIAL, "torch.fft": _FFT, "math": _MATH,
}
# Modules a candidate may import (torch.nn offers nothing but the path to its functional).
ALLOWED_IMPORTS = frozenset(MODULE_NAMES)

# ---- what each kind of object a candidate can hold offers --------------------------------------

TENSOR_ATTRIBUTES = _ELEMENTWISE_AND_REDUCTIONS | _words("""
    reshape reshape_as flatten unflatten squeeze unsqueeze transpose permute t T mT H mH view
    view_as expand expand_as repeat repeat_interleave split chunk tensor_split narrow select
    gather scatter scatter_add scatter_reduce index_select index_add index_copy index_fill
    index_put masked_select masked_fill masked_scatter take take_along_dim nonzero argwhere
    flip fliplr flipud roll rot90 tile broadcast_to diag diagonal diag_embed tril triu movedim
    swapaxes swapdims ravel unfold sum_to_size fill_diagonal_
    matmul mm bmm mv dot vdot outer ger inner kron cross det logdet inverse pinverse cholesky
    qr svd trace matrix_power matrix_exp dist renorm frexp real imag conj angle positive
    clone detach contiguous float double half bfloat16 int long bool to type_as cpu cuda
    new_zeros new_ones new_full new_tensor
    shape size dim ndim ndimension numel nelement dtype device layout is_floating_point
    is_complex is_contiguous is_cuda element_size itemsize nbytes stride item tolist data
    requires_grad
    add_ sub_ mul_ div_ pow_ abs_ sqrt_ rsqrt_ log_ log1p_ exp_ neg_ sign_ clamp_ clamp_min_
    clamp_max_ clip_ zero_ fill_ masked_fill_ scatter_ scatter_add_ index_fill_ index_put_
    index_add_ index_copy_ copy_ floor_ ceil_ round_ trunc_ reciprocal_ square_ sigmoid_ tanh_
    relu_ lerp_ addcmul_ addcdiv_ nan_to_num_ t_ transpose_ squeeze_ unsqueeze_ tril_ triu_
    fmod_ remainder_ logical_not_ sin_ cos_ erf_ exp2_ expm1_ log2_ log10_ atan_
""")
# X's fields a candidate may read: the candidate contract's, nothing else of ActivationStats.
STATS_ATTRIBUTES = frozenset(CONTRACT_NAMES)
RESULT_ATTRIBUTES = _words("""
    values indices eigenvalues eigenvectors U S Vh V Q R L LU pivots sign logabsdet solution
    residuals rank singular_values min max mantissa exponent hist bin_edges info inverse
""")
STR_ATTRIBUTES = _words("""
    capitalize casefold center count endswith find index isalnum isalpha isdigit islower
    isnumeric isspace isupper join ljust lower lstrip partition removeprefix removesuffix
    replace rfind rindex rjust rpartition rsplit rstrip split splitlines startswith strip
    swapcase title upper zfill
""")
NUMBER_ATTRIBUTES = _words("real imag conjugate is_integer bit_length as_integer_ratio")
_PLAIN_ATTRIBUTES: dict[type, frozenset[str]] = {
    str: STR_ATTRIBUTES, int: NUMBER_ATTRIBUTES, float: NUMBER_ATTRIBUTES, bool: NUMBER_ATTRIBUTES,
    complex: NUMBER_ATTRIBUTES,
    list: _words("append extend insert pop remove index count sort reverse copy clear"),
    tuple: _words("count index"),
    dict: _words("keys values items get pop setdefault update copy clear"),
    set: _words("add discard remove pop union intersection difference symmetric_difference "
                "issubset issuperset isdisjoint update copy clear"),
    frozenset: _words("union intersection difference symmetric_difference issubset "
                      "issuperset isdisjoint copy"),
    torch.Size: _words("numel count index"),
    torch.dtype: _words("is_floating_point is_complex is_signed itemsize"),
    torch.device: _words("type index"),
    torch.finfo: _words("eps max min tiny smallest_normal resolution bits dtype"),
    torch.iinfo: _words("max min bits dtype"),
    slice: _words("start stop step"),
}

ALLOWED_BUILTINS = _words("""
    None True False abs all any bool complex dict divmod enumerate filter float frozenset int
    isinstance iter len list map max min next pow range repr reversed round set slice sorted str
    sum tuple zip
    Exception ArithmeticError AssertionError IndexError KeyError LookupError NotImplementedError
    OverflowError RuntimeError StopIteration TypeError ValueError ZeroDivisionError
""")
BUILTIN_HINTS = {
    "open": "candidates get W and X as arguments and must not touch files",
    "exec": "write the computation as plain code in score()",
    "eval": "write the computation as plain code in score()",
    "compile": "write the computation as plain code in score()",
    "globals": "pass values as arguments or module-level constants",
    "locals": "pass values as arguments or module-level constants",
    "vars": "use the attributes of X directly (X.norm, X.var, ...)",
    "getattr": "write the attribute directly, e.g. X.norm",
    "hasattr": "write the attribute directly, e.g. X.norm (use only the fields the run collected)",
    "setattr": "build new tensors instead of changing objects",
    "delattr": "build new tensors instead of changing objects",
    "type": "use isinstance() to test types",
    "format": "build text with f-strings such as f\"{x:.3f}\"",
    "dir": "use the documented fields of X: " + ", ".join(sorted(STATS_ATTRIBUTES)),
    "exit": "return a tensor from score()",
    "quit": "return a tensor from score()",
}
# print() compiles to RestrictedPython's collector (dropped), so it is not a builtin here.
FORBIDDEN_BUILTINS = frozenset(BUILTIN_HINTS) | {
    n for n in dir(builtins) if not n.startswith("_") and n not in ALLOWED_BUILTINS | {"print"}}

_EVERY_ATTRIBUTE = (frozenset().union(*MODULE_NAMES.values(), *_PLAIN_ATTRIBUTES.values())
                    | TENSOR_ATTRIBUTES | STATS_ATTRIBUTES | RESULT_ATTRIBUTES)
_EXAMPLES = {"torch": ("abs", "sqrt", "log1p", "pow", "where", "clamp", "topk", "quantile",
                       "linalg.norm"),
             "torch.nn": ("functional",)}
_TENSOR_EXAMPLES = "W.abs(), .sqrt(), .pow(p), .log1p(), .clamp(min=...), .sum(dim=1), .topk(k)"


def attribute_hint(owner: str, name: str) -> str:
    """The rejection an LLM can act on: what is not allowed and what it may use instead."""
    if owner in MODULE_NAMES:
        names = _EXAMPLES.get(owner) or sorted(MODULE_NAMES[owner])[:8]
        examples = ", ".join(f"{owner}.{n}" for n in names)
        return (f"'{owner}.{name}' is not allowed; a candidate may use tensor operations such as "
                f"{examples}, ... (files, processes, modules and torch internals are out of reach)")
    if owner == "ActivationStats":
        return (f"X has no field '{name}'; its fields are {', '.join(sorted(STATS_ATTRIBUTES))}")
    return (f"'.{name}' is not allowed on a {owner} object; a candidate may use tensor operations "
            f"such as {_TENSOR_EXAMPLES} and the fields of X")


# ---- the static side ----------------------------------------------------------------------------

def tree_size_error(tree: ast.AST, max_depth: int = MAX_AST_DEPTH) -> str | None:
    """Depth / size bound of a syntax tree, measured without recursion (None when within)."""
    stack, nodes = [(tree, 1, 1)], 0
    while stack:
        node, depth, line = stack.pop()
        line = getattr(node, "lineno", line)
        nodes += 1
        if depth > max_depth or nodes > MAX_AST_NODES:
            what = (f"nests {max_depth}+ levels deep" if depth > max_depth
                    else f"has more than {MAX_AST_NODES} syntax nodes")
            return (f"Line {line}: the code {what}; split long expressions into several "
                    "assignments (s = a + b, then s = s + c) or use torch.stack(...).sum(0)")
        stack.extend((child, depth + 1, line) for child in ast.iter_child_nodes(node))
    return None


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name the source binds itself (variables, parameters, functions, imports)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
    return bound


def _module_aliases(tree: ast.AST) -> dict[str, str]:
    """Names bound by imports -> the allowed module they name."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in MODULE_NAMES:
                    aliases[alias.asname or alias.name] = full
    return aliases


class CandidatePolicy(RestrictingNodeTransformer):
    """RestrictedPython's transformer plus our allow-lists of imports, names and attributes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.module_aliases: dict[str, str] = {}
        self.bound_names: set[str] = set()

    def visit_Module(self, node):
        self.module_aliases = _module_aliases(node)
        self.bound_names = _bound_names(node)
        return super().visit_Module(node)

    def _static_module(self, node) -> str | None:
        """The allowed module an expression names (torch, F, torch.nn.functional ...), if any."""
        if isinstance(node, ast.Name):
            return self.module_aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._static_module(node.value)
            if base is not None and f"{base}.{node.attr}" in MODULE_NAMES:
                return f"{base}.{node.attr}"
        return None

    def check_import_names(self, node):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or module not in MODULE_NAMES:
                return self._bad_import(node, ("." * node.level) + module)
            for alias in node.names:
                full = f"{module}.{alias.name}"
                if alias.name not in MODULE_NAMES[module] and full not in MODULE_NAMES:
                    self.error(node, attribute_hint(module, alias.name))
                    return node
        else:
            for alias in node.names:
                if alias.name not in ALLOWED_IMPORTS:
                    return self._bad_import(node, alias.name)
        return super().check_import_names(node)

    def _bad_import(self, node, name):
        self.error(node, f"import of '{name}' is not allowed; a candidate may import only "
                         f"{', '.join(sorted(ALLOWED_IMPORTS))}. Remove the import and "
                         "compute with torch operations on W and X")
        return node

    def visit_Name(self, node):
        # A builtin off the allow-list is absent at run time; say so now, unless the source
        # binds that name itself (a variable called `input` is fine).
        if node.id in FORBIDDEN_BUILTINS and node.id not in self.bound_names:
            hint = BUILTIN_HINTS.get(node.id, "it is not on the candidates' allow-list")
            self.error(node, f"'{node.id}' is forbidden in candidates; {hint}")
        return super().visit_Name(node)

    def visit_Attribute(self, node):
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self.error(node, f"assigning to '{ast.unparse(node)}' is forbidden (no changing of "
                             "objects or modules); compute new tensors instead")
            return node
        module = self._static_module(node.value)
        if module is not None and node.attr not in MODULE_NAMES[module] \
                and not node.attr.startswith("_"):
            self.error(node, attribute_hint(module, node.attr))
        elif node.attr not in _EVERY_ATTRIBUTE and not node.attr.startswith("_"):
            self.error(node, f"'.{node.attr}' is not allowed; a candidate may use tensor "
                             f"operations such as {_TENSOR_EXAMPLES} and the fields of X "
                             f"({', '.join(sorted(STATS_ATTRIBUTES))})")
        return super().visit_Attribute(node)

    def visit_BinOp(self, node):
        node = super().visit_BinOp(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            if isinstance(node.left, (ast.Constant, ast.JoinedStr)) and \
                    isinstance(getattr(node.left, "value", ""), (str, bytes)):
                self.error(node, "'%' formatting of strings is forbidden; use f-strings")
                return node
            guard = ast.copy_location(ast.Name("_mod_", ast.Load()), node)
            call = ast.Call(func=guard, args=[node.left, node.right], keywords=[])
            return ast.copy_location(call, node)
        return node

    def visit_FormattedValue(self, node):
        spec = node.format_spec
        if spec is not None and not all(isinstance(v, ast.Constant) for v in spec.values):
            self.error(node, "computed f-string format specs are forbidden; write the spec "
                             "literally, e.g. f\"{x:.3f}\"")
        return super().visit_FormattedValue(node)

    def visit_Yield(self, node):
        self.error(node, "'yield' is forbidden; write a plain function that returns a tensor")
        return node

    visit_YieldFrom = visit_Yield

    def visit_Global(self, node):
        self.error(node, "'global' is forbidden; return values from functions instead")
        return node

    def visit_Nonlocal(self, node):
        self.error(node, "'nonlocal' is forbidden; return values from functions instead")
        return node

    def visit_ClassDef(self, node):
        self.error(node, "class definitions are forbidden; write plain functions")
        return node

    def visit_AsyncFunctionDef(self, node):
        self.error(node, "async functions are forbidden; write a plain def score(W, X)")
        return node


def uncompilable_error(exc: BaseException) -> str:
    """The rejection for a source the parser itself cannot hold (too deep, null bytes)."""
    return (f"Line 1: the code cannot be parsed ({type(exc).__name__}: {str(exc)[:80]}); write "
            "shorter, flatter expressions (s = a + b, then s = s + c) in plain text")


def compile_candidate(source: str, filename: str = "candidate.py"):
    """Compile with the policy: returns (code, errors). `errors` are 'Line N: ...' strings.

    Never raises: a source too deep or too large for the compiler is an error like any other."""
    try:
        with PARSER_LOCK:
            tree = parse_python(source, filename)
            too_big = tree_size_error(tree)
            if too_big:
                return None, [too_big]
            result = compile_restricted_exec(source, filename=filename, policy=CandidatePolicy)
    except SyntaxError as exc:
        return None, [f"Line {exc.lineno}: syntax error: {exc.msg}; fix the Python syntax"]
    except (RecursionError, MemoryError, ValueError) as exc:
        return None, [uncompilable_error(exc)]
    return result.code, list(result.errors)


# ---- runtime guards (used by the worker when executing a compiled candidate) --------------------

class GuardError(PermissionError):
    """A candidate tried something the policy forbids at run time."""


def _allowed_module_name(value) -> str | None:
    """The allow-listed name of a module object (by identity), or None."""
    if not isinstance(value, types.ModuleType):
        return None
    name = getattr(value, "__name__", None)
    return name if name in MODULE_NAMES and sys.modules.get(name) is value else None


def _allowed_names(obj) -> tuple[str, frozenset[str]]:
    """(a name for the kind of `obj`, the attributes a candidate may read on it)."""
    if isinstance(obj, types.ModuleType):
        name = _allowed_module_name(obj)
        return (name or "module", MODULE_NAMES.get(name, frozenset()))
    if type(obj) is ActivationStats:
        return "ActivationStats", STATS_ATTRIBUTES
    if isinstance(obj, torch.Tensor):
        return "Tensor", TENSOR_ATTRIBUTES
    if type(obj).__module__ == "torch.return_types":
        return "torch result", RESULT_ATTRIBUTES
    kind = type(obj)
    return kind.__name__, _PLAIN_ATTRIBUTES.get(kind, frozenset())


def guarded_getattr(obj, name):
    if not isinstance(name, str):
        raise GuardError("attribute names must be written literally")
    owner, allowed = _allowed_names(obj)
    if name.startswith("_") or name not in allowed:
        raise GuardError(attribute_hint(owner, name))
    value = getattr(obj, name)
    if value is None and owner == "ActivationStats":      # a field the run did not collect
        carried = [{n for n in CONTRACT_NAMES if getattr(obj, n) is not None}]
        raise GuardError(contract.not_offered_message([name], **contract.offered_by(carried)))
    if isinstance(value, types.ModuleType) and _allowed_module_name(value) is None:
        raise GuardError(f"module {owner}.{name} is not reachable from candidates")
    return value


def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    """The import hook: allowed modules only, and `from M import x` only for M's allowed x
    (Python fetches x with a native getattr after this returns, so it is checked here)."""
    if level != 0 or name not in ALLOWED_IMPORTS:
        raise GuardError(f"import of '{name}' is not allowed; a candidate may import only "
                         f"{', '.join(sorted(ALLOWED_IMPORTS))}")
    for item in fromlist or ():
        if not isinstance(item, str) or (item not in MODULE_NAMES[name]
                                         and f"{name}.{item}" not in MODULE_NAMES):
            raise GuardError(attribute_hint(name, str(item)))
    return __import__(name, globals, locals, fromlist, level)


def guarded_write(obj):
    """Subscript stores (x[i] = v) only into plain tensors and containers the candidate built;
    attribute stores never compile."""
    if type(obj) in (torch.Tensor, list, dict):
        return obj
    raise GuardError(f"cannot modify {type(obj).__name__} objects; build new tensors instead")


def guarded_mod(x, y):
    """`x % y` for numbers and tensors; string formatting with % is refused."""
    if isinstance(x, (str, bytes)):
        raise GuardError("'%' formatting of strings is forbidden; use f-strings")
    return x % y


_INPLACE = {"+=": lambda x, y: x + y, "-=": lambda x, y: x - y, "*=": lambda x, y: x * y,
            "/=": lambda x, y: x / y, "//=": lambda x, y: x // y, "%=": guarded_mod,
            "**=": lambda x, y: x ** y, "@=": lambda x, y: x @ y, "&=": lambda x, y: x & y,
            "|=": lambda x, y: x | y, "^=": lambda x, y: x ^ y}


def guarded_inplacevar(op, x, y):
    if op not in _INPLACE:
        raise GuardError(f"operator {op} is not allowed")
    return _INPLACE[op](x, y)


class _DroppedPrint:
    """print() in a candidate: accepted and dropped (never shown, no file= redirection)."""

    def __init__(self, _getattr_=None):
        pass

    def _call_print(self, *args, **kwargs):
        return None

    def __call__(self):
        return ""


def candidate_globals() -> dict:
    """Fresh globals for executing one compiled candidate."""
    safe = {name: getattr(builtins, name) for name in ALLOWED_BUILTINS}
    safe["__import__"] = guarded_import
    return {
        "__builtins__": safe, "__name__": "candidate",
        "_getattr_": guarded_getattr, "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter, "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence, "_write_": guarded_write,
        "_inplacevar_": guarded_inplacevar, "_mod_": guarded_mod,
        "_apply_": lambda function, *args, **kwargs: function(*args, **kwargs),
        "_print_": _DroppedPrint,
    }
