"""The ROS 2 shell around the core: nodes, message conversion, parameters, diagnostics.

Nothing outside this package imports rclpy or ROS messages (a test checks it).
"""
