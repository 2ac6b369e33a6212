// A stand-in for the project's server: stays up, reports ready when asked to.
if (process.send) process.send('ready');
setInterval(() => {}, 1 << 30);
