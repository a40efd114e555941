"""ovseg_ros: open-vocabulary semantic segmentation (Xu et al., ECCV 2022) for ROS 2.

`ovseg_ros.engine` is the ROS-free segmenter; `ovseg_ros.ros` holds the rclpy nodes;
`ovseg_ros.msg` is generated from msg/ by the ROS build.
"""

import os
from pkgutil import extend_path

# torch's OpenMP threads spin after each parallel region by default; on a machine with few cores
# that starves the DDS and executor threads the node needs between frames (2 cores, tiny CLIP in
# bf16: publish-to-result latency 1.0 s spinning, 0.37 s passive; in-process frame time the
# same). Effective only when torch is imported after ovseg_ros; set the variable to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# In a source checkout the generated `ovseg_ros.msg` lives in the colcon install tree while the
# Python sources live here: let the package span every `ovseg_ros` directory on sys.path.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
