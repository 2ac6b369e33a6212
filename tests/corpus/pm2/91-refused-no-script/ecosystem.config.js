module.exports = { apps: [{ name: 'nothing', instances: 2 }] };
