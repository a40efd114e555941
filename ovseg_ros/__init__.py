"""ovseg_ros: open-vocabulary semantic segmentation (Xu et al., ECCV 2022) for ROS 2.

`ovseg_ros.engine` is the ROS-free segmenter; `ovseg_ros.ros` holds the rclpy nodes;
`ovseg_ros.msg` is generated from msg/ by the ROS build.
"""

from pkgutil import extend_path

# In a source checkout the generated `ovseg_ros.msg` lives in the colcon install tree while the
# Python sources live here: let the package span every `ovseg_ros` directory on sys.path.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
