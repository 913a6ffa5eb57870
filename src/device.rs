//! Device names as users write them: `cpu`, `cuda` or `cuda:N`.
use anyhow::{bail, Result};
use tch::Device;

/// Parses a device name and checks that the device exists on this machine.
pub fn parse(name: &str) -> Result<Device> {
    let dev = match name.trim() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => bail!("unknown device {name:?}; expected cpu, cuda or cuda:N"),
        },
    };
    let count = tch::Cuda::device_count() as usize;
    if !tch::Cuda::is_available() || count == 0 {
        bail!("device {name:?} asked for, but no CUDA GPU is available on this machine");
    }
    if dev >= count {
        bail!("device {name:?} asked for, but this machine has {count} CUDA device(s)");
    }
    Ok(Device::Cuda(dev))
}

/// Human-readable name for summaries and benchmarks.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
