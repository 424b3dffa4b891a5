"""The FLOP counter on a hand-computed graph."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ms_ddpm.bench.latency import count_flops


def _graph() -> onnx.ModelProto:
    """x (B,2,6,6) -Conv 3x3 pad1 -> (B,4,6,6) -ConvT 2/2 -> (B,3,12,12) -Reshape (B,3,144) -MatMul W(144,5) ->
    (B,3,5) -Reshape (B,15) -Gemm (15 -> 7)."""
    init = [
        numpy_helper.from_array(np.zeros((4, 2, 3, 3), np.float32), "wc"),
        numpy_helper.from_array(np.zeros((4, 3, 2, 2), np.float32), "wt"),
        numpy_helper.from_array(np.array([-1, 3, 144], np.int64), "s1"),
        numpy_helper.from_array(np.zeros((144, 5), np.float32), "wm"),
        numpy_helper.from_array(np.array([-1, 15], np.int64), "s2"),
        numpy_helper.from_array(np.zeros((15, 7), np.float32), "wg"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["u"], strides=[2, 2]),
        helper.make_node("Reshape", ["u", "s1"], ["r"]),
        helper.make_node("MatMul", ["r", "wm"], ["m"]),
        helper.make_node("Reshape", ["m", "s2"], ["r2"]),
        helper.make_node("Gemm", ["r2", "wg"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 7])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_flop_counter_matches_the_hand_count():
    conv = 2 * (4 * 6 * 6) * (2 * 3 * 3)          # outputs x MACs per output
    conv_t = 2 * (4 * 6 * 6) * (3 * 2 * 2)        # inputs x kernel scatter
    matmul = 2 * (3 * 5) * 144
    gemm = 2 * 7 * 15
    per_image = conv + conv_t + matmul + gemm
    assert count_flops(_graph(), batch=1) == per_image
    assert count_flops(_graph(), batch=5) == 5 * per_image
